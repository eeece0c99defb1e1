"""The GPT decoder: token + learned position embeddings, pre-norm blocks, and
an LM head tied to the token embedding; or, by its options, the decoders of
other pretrained families (RMSNorm, rotary positions, SwiGLU or GeGLU,
grouped-query attention, wider heads, q/k norms, a sliding window, scaled
embeddings, an untied head, no biases; `tfchat.families` maps each)."""

import math

import keras
import tensorflow as tf
from keras import ops

from tfchat.config import POSITIONS
from tfchat.model.layers import (
    MLPS, NORMS, ROPE_ARGS, TransformerBlock, check_choice, make_norm, normal,
    segment_positions,
)


@keras.saving.register_keras_serializable(package="tfchat")
class GPT(keras.Model):
    """A GPT-style causal language model (logits out; training lives in
    `tfchat.model.tasks.CausalLM`).

    Args:
        vocabulary_size: int. Tokenizer vocabulary V.
        num_layers: int. Transformer blocks L.
        num_heads: int. Attention heads H per block.
        hidden_dim: int. Model width C.
        intermediate_dim: int. MLP width; 0 means 4 * hidden_dim.
        block_size: int. Context length (position embeddings).
        dropout: float.
        norm: "layernorm" (GPT-2) | "rmsnorm" | "rmsnorm_plus_one".
        norm_epsilon: float. Epsilon of every norm.
        position: "learned" (GPT-2: a position embedding) | "rope" (rotary
            embeddings on q and k, no position embedding weight).
        rope_theta: float. Rotary base wavelength.
        rope_scaling_factor, rope_low_freq_factor, rope_high_freq_factor,
            rope_original_max_positions: Llama 3's rope scaling (off at
            factor 1.0); see `tfchat.model.layers.rope_inverse_frequencies`.
        mlp: "gelu" (GPT-2) | "swiglu" (gate, up, down; SiLU) | "geglu".
        num_kv_heads: int. Key/value heads (grouped-query attention); 0 means
            num_heads.
        tie_embeddings: bool. The LM head is the token embedding (GPT-2,
            Qwen2 small) or a separate `lm_head` weight (Llama).
        qkv_bias: bool. Bias on the q/k/v projection (GPT-2, Qwen2).
        use_bias: bool. Bias on every other Dense layer (GPT-2).
        head_dim: int. Width of each attention head; 0 means hidden_dim /
            num_heads.
        sliding_window: int. Each token attends to itself and the
            sliding_window - 1 tokens before it; 0 means all before it.
        qk_norm: bool. RMSNorm on each head's queries and keys.
        scale_embeddings: bool. Token embeddings times sqrt(hidden_dim) (the
            tied head still uses the table unscaled).

    Call: token_ids [B, T] int -> logits [B, T, V] float32. With
    `segment_ids` [B, T] int (a packed block: several sequences per row, see
    `tfchat.data.pipeline.pack_segments`), attention stays within each
    segment and positions restart at 0 in each, so every sequence's logits
    are those it would get alone in a row.

    Example:
    ```python
    gpt = GPT(vocabulary_size=65, num_layers=2, num_heads=2, hidden_dim=32,
              block_size=16)
    logits = gpt(tf.zeros((1, 16), "int32"))            # [1, 16, 65]
    cache = gpt.build_cache(batch_size=1, max_length=16)
    logits, cache = gpt.call_with_cache(tf.zeros((1, 4), "int32"), cache, 0)
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        block_size,
        intermediate_dim=0,
        dropout=0.0,
        norm="layernorm",
        norm_epsilon=1e-5,
        position="learned",
        rope_theta=10000.0,
        rope_scaling_factor=1.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_positions=8192,
        mlp="gelu",
        num_kv_heads=0,
        tie_embeddings=True,
        qkv_bias=True,
        use_bias=True,
        head_dim=0,
        sliding_window=0,
        qk_norm=False,
        scale_embeddings=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_choice("norm", norm, NORMS)
        check_choice("position", position, POSITIONS)
        check_choice("mlp", mlp, MLPS)
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim or 4 * hidden_dim
        self.block_size = block_size
        self.dropout = dropout
        self.norm = norm
        self.norm_epsilon = norm_epsilon
        self.position = position
        self.rope_theta = rope_theta
        self.rope_scaling_factor = rope_scaling_factor
        self.rope_low_freq_factor = rope_low_freq_factor
        self.rope_high_freq_factor = rope_high_freq_factor
        self.rope_original_max_positions = rope_original_max_positions
        self.mlp = mlp
        self.num_kv_heads = num_kv_heads or num_heads
        self.tie_embeddings = tie_embeddings
        self.qkv_bias = qkv_bias
        self.use_bias = use_bias
        self.head_dim = head_dim  # 0: hidden_dim / num_heads, checked by the blocks
        self.sliding_window = sliding_window
        self.qk_norm = qk_norm
        self.scale_embeddings = scale_embeddings

        # === Layers ===
        init = normal()
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size, hidden_dim, embeddings_initializer=init,
            dtype=self.dtype_policy, name="token_embedding",
        )
        self.position_embedding = None
        if position == "learned":
            self.position_embedding = keras.layers.Embedding(
                block_size, hidden_dim, embeddings_initializer=init,
                dtype=self.dtype_policy, name="position_embedding",
            )
        self.embedding_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        # Per GPT-2: scale residual projections by 1/sqrt(2 * num_layers).
        output_stddev = 0.02 / math.sqrt(2 * num_layers)
        # One attribute per block, not a list: Keras 3 leaves layers held in a
        # list out of tf.train.Checkpoint's object graph, so a checkpoint of
        # the model alone would silently miss every block's weights.
        for i in range(num_layers):
            block = TransformerBlock(
                num_heads, hidden_dim, self.intermediate_dim, dropout=dropout,
                causal=True, output_stddev=output_stddev,
                layer_norm_epsilon=norm_epsilon, norm=norm, mlp=mlp,
                num_kv_heads=self.num_kv_heads, rope=position == "rope",
                qkv_bias=qkv_bias, use_bias=use_bias, head_dim=head_dim,
                sliding_window=sliding_window, qk_norm=qk_norm,
                dtype=self.dtype_policy, name=f"block_{i}",
                **{name: getattr(self, name) for name in ROPE_ARGS},
            )
            setattr(self, f"block_{i}", block)
        self.final_norm = make_norm(norm, norm_epsilon, self.dtype_policy, "final_norm")
        self.lm_head = None
        if not tie_embeddings:
            self.lm_head = keras.layers.Dense(
                vocabulary_size, use_bias=False, kernel_initializer=init,
                dtype=self.dtype_policy, name="lm_head",
            )

    @property
    def blocks(self):
        return [getattr(self, f"block_{i}") for i in range(self.num_layers)]

    def build(self, input_shape=None):
        self.token_embedding.build((None, None))
        if self.position_embedding is not None:
            self.position_embedding.build((None, None))
        for block in self.blocks:
            block.build((None, None, self.hidden_dim))
        self.final_norm.build((None, None, self.hidden_dim))
        if self.lm_head is not None:
            self.lm_head.build((None, None, self.hidden_dim))
        self.built = True

    def _embed(self, token_ids, start, training, segment_ids=None):
        x = self.token_embedding(token_ids)  # [B, T, C]
        if self.scale_embeddings:
            x = x * ops.cast(math.sqrt(self.hidden_dim), x.dtype)
        if self.position_embedding is not None:
            # With rope, positions enter each block's attention instead.
            if segment_ids is None:
                length = ops.shape(token_ids)[1]
                positions = (ops.arange(length) + ops.cast(start, "int32"))[None]  # [1, T]
            else:
                positions = segment_positions(segment_ids)  # [B, T]
            x = x + self.position_embedding(positions)
        return self.embedding_dropout(x, training=training)

    def _lm_head(self, x):
        """[B, T, C] -> float32 logits [B, T, V], weights tied to the embedding
        (or the separate `lm_head` when `tie_embeddings` is False)."""
        if self.lm_head is not None:
            return ops.cast(self.lm_head(x), "float32")
        embeddings = ops.cast(self.token_embedding.embeddings, x.dtype)
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        flat = ops.reshape(x, (-1, self.hidden_dim))
        logits = tf.matmul(flat, embeddings, transpose_b=True)
        if self.token_embedding.quantization_mode == "int8":
            # int8 rows q with one scale s per row (`tfchat.model.quantize`):
            # x @ (q / s)^T = (x @ q^T) / s, without a float copy of the table.
            logits = logits / ops.cast(self.token_embedding.embeddings_scale, x.dtype)
        return ops.cast(
            ops.reshape(logits, (batch, length, self.vocabulary_size)), "float32"
        )

    def call(self, token_ids, segment_ids=None, training=None):
        x = self._embed(token_ids, 0, training, segment_ids)
        for block in self.blocks:
            x = block(x, segment_ids=segment_ids, training=training)
        return self._lm_head(self.final_norm(x))

    def call_with_attention(self, token_ids, segment_ids=None):
        """`call`'s logits [B, T, V] (inference: no dropout) and every
        block's attention probabilities, a list of L [B, H, T, T] tensors
        (query t's softmax over keys, masked as `call` masks them), for
        pictures of what the model attends to (`tfchat.evaluation.plots`).
        `call` itself computes none of them."""
        x = self._embed(token_ids, 0, False, segment_ids)
        maps = []
        for block in self.blocks:
            x, probs = block(x, segment_ids=segment_ids, return_attention=True)
            maps.append(probs)
        return self._lm_head(self.final_norm(x)), maps

    def attention_maps(self, token_ids, segment_ids=None):
        """Every block's attention probabilities for token_ids [B, T]: a list
        of L [B, H, T, T] tensors (see `call_with_attention`)."""
        return self.call_with_attention(token_ids, segment_ids)[1]

    def build_cache(self, batch_size, max_length):
        """Zeros for every layer's keys and values: [B, L, 2, S, K, D], K the
        key/value heads (num_kv_heads)."""
        head_dim = self.head_dim or self.hidden_dim // self.num_heads
        shape = (batch_size, self.num_layers, 2, max_length, self.num_kv_heads, head_dim)
        return ops.zeros(shape, dtype=self.compute_dtype)

    def call_with_cache(self, token_ids, cache, cache_update_index):
        """Runs [B, T] new tokens starting at `cache_update_index`, attending
        to the cached positions before them. Returns (logits [B, T, V], cache)."""
        x = self._embed(token_ids, cache_update_index, False)
        caches = []
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(
                x, cache=cache[:, i], cache_update_index=cache_update_index
            )
            caches.append(layer_cache)
        return self._lm_head(self.final_norm(x)), ops.stack(caches, axis=1)

    def num_params(self, non_embedding=True):
        """Parameter count; by default without position embeddings, as in
        nanoGPT (the token embedding is tied to the head, so it counts)."""
        total = sum(int(math.prod(w.shape)) for w in self.weights)
        if non_embedding and self.position_embedding is not None:
            total -= int(math.prod(self.position_embedding.embeddings.shape))
        return total

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            hidden_dim=self.hidden_dim,
            intermediate_dim=self.intermediate_dim,
            block_size=self.block_size,
            dropout=self.dropout,
            norm=self.norm,
            norm_epsilon=self.norm_epsilon,
            position=self.position,
            rope_theta=self.rope_theta,
            rope_scaling_factor=self.rope_scaling_factor,
            rope_low_freq_factor=self.rope_low_freq_factor,
            rope_high_freq_factor=self.rope_high_freq_factor,
            rope_original_max_positions=self.rope_original_max_positions,
            mlp=self.mlp,
            num_kv_heads=self.num_kv_heads,
            tie_embeddings=self.tie_embeddings,
            qkv_bias=self.qkv_bias,
            use_bias=self.use_bias,
            head_dim=self.head_dim,
            sliding_window=self.sliding_window,
            qk_norm=self.qk_norm,
            scale_embeddings=self.scale_embeddings,
        )
        return config
