"""The GPT decoder: token + learned position embeddings, pre-norm blocks, and
an LM head tied to the token embedding."""

import math

import keras
import tensorflow as tf
from keras import ops

from tfchat.model.layers import TransformerBlock, normal


@keras.saving.register_keras_serializable(package="tfchat")
class GPT(keras.Model):
    """A GPT-style causal language model (logits out; training lives in
    `tfchat.train.tasks.CausalLM`).

    Args:
        vocabulary_size: int. Tokenizer vocabulary V.
        num_layers: int. Transformer blocks L.
        num_heads: int. Attention heads H per block.
        hidden_dim: int. Model width C.
        intermediate_dim: int. MLP width; 0 means 4 * hidden_dim.
        block_size: int. Context length (position embeddings).
        dropout: float.

    Call: token_ids [B, T] int -> logits [B, T, V] float32.

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
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim or 4 * hidden_dim
        self.block_size = block_size
        self.dropout = dropout

        # === Layers ===
        init = normal()
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size, hidden_dim, embeddings_initializer=init,
            dtype=self.dtype_policy, name="token_embedding",
        )
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
                dtype=self.dtype_policy, name=f"block_{i}",
            )
            setattr(self, f"block_{i}", block)
        self.final_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, dtype=self.dtype_policy, name="final_norm"
        )

    @property
    def blocks(self):
        return [getattr(self, f"block_{i}") for i in range(self.num_layers)]

    def build(self, input_shape=None):
        self.token_embedding.build((None, None))
        self.position_embedding.build((None, None))
        for block in self.blocks:
            block.build((None, None, self.hidden_dim))
        self.final_norm.build((None, None, self.hidden_dim))
        self.built = True

    def _embed(self, token_ids, start, training):
        length = ops.shape(token_ids)[1]
        positions = ops.arange(length) + ops.cast(start, "int32")
        x = self.token_embedding(token_ids) + self.position_embedding(positions)[None]
        return self.embedding_dropout(x, training=training)

    def _lm_head(self, x):
        """[B, T, C] -> float32 logits [B, T, V], weights tied to the embedding."""
        embeddings = ops.cast(self.token_embedding.embeddings, x.dtype)
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        flat = ops.reshape(x, (-1, self.hidden_dim))
        logits = tf.matmul(flat, embeddings, transpose_b=True)
        return ops.cast(
            ops.reshape(logits, (batch, length, self.vocabulary_size)), "float32"
        )

    def call(self, token_ids, training=None):
        x = self._embed(token_ids, 0, training)
        for block in self.blocks:
            x = block(x, training=training)
        return self._lm_head(self.final_norm(x))

    def build_cache(self, batch_size, max_length):
        """Zeros for every layer's keys and values: [B, L, 2, S, H, D]."""
        head_dim = self.hidden_dim // self.num_heads
        shape = (batch_size, self.num_layers, 2, max_length, self.num_heads, head_dim)
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
        if non_embedding:
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
        )
        return config
