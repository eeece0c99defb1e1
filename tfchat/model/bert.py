"""The BERT encoder: token + learned position (+ optional segment)
embeddings, bidirectional pre-norm blocks over a padding mask, a pooled
output, and the masked-LM head tied to the token embedding.

The blocks are GPT's (`tfchat.model.layers.TransformerBlock`) with
`causal=False`: every token attends to every real (unpadded) token.
"""

import math

import keras
import tensorflow as tf
from keras import ops

from tfchat.model.layers import TransformerBlock, normal


@keras.saving.register_keras_serializable(package="tfchat")
class BertEncoder(keras.Model):
    """A BERT-style encoder (training lives in
    `tfchat.model.tasks`: `MaskedLM`, `TextClassifier`).

    Args:
        vocabulary_size: int. Tokenizer vocabulary V.
        num_layers: int. Transformer blocks L.
        num_heads: int. Attention heads H per block.
        hidden_dim: int. Model width C.
        block_size: int. Longest input T (position embeddings).
        intermediate_dim: int. MLP width; 0 means 4 * hidden_dim.
        dropout: float.
        num_segments: int. Segment (token type) embeddings for inputs made of
            several texts; 0 = none, and `segment_ids` is not read.

    Call: a dict of `token_ids` [B, T] int, `padding_mask` [B, T] bool/int
    (1 for real tokens) and, with `num_segments`, `segment_ids` [B, T] int.
    Returns a dict of `sequence_output` [B, T, C] (normalised) and
    `pooled_output` [B, C] (tanh(dense) of the first, [CLS], position).

    Example:
    ```python
    encoder = BertEncoder(vocabulary_size=100, num_layers=2, num_heads=2,
                          hidden_dim=32, block_size=16)
    out = encoder({"token_ids": tf.zeros((1, 16), "int32"),
                   "padding_mask": tf.ones((1, 16), "bool")})
    out["sequence_output"].shape, out["pooled_output"].shape  # (1,16,32) (1,32)
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
        num_segments=0,
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
        self.num_segments = num_segments

        # === Layers ===
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size, hidden_dim, embeddings_initializer=normal(),
            dtype=self.dtype_policy, name="token_embedding",
        )
        self.position_embedding = keras.layers.Embedding(
            block_size, hidden_dim, embeddings_initializer=normal(),
            dtype=self.dtype_policy, name="position_embedding",
        )
        self.segment_embedding = None
        if num_segments:
            self.segment_embedding = keras.layers.Embedding(
                num_segments, hidden_dim, embeddings_initializer=normal(),
                dtype=self.dtype_policy, name="segment_embedding",
            )
        self.embedding_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        output_stddev = 0.02 / math.sqrt(2 * num_layers)
        # One attribute per block, not a list: Keras 3 leaves layers held in a
        # list out of tf.train.Checkpoint's object graph (see tfchat.model.gpt).
        for i in range(num_layers):
            block = TransformerBlock(
                num_heads, hidden_dim, self.intermediate_dim, dropout=dropout,
                causal=False, output_stddev=output_stddev,
                dtype=self.dtype_policy, name=f"block_{i}",
            )
            setattr(self, f"block_{i}", block)
        self.final_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, dtype=self.dtype_policy, name="final_norm"
        )
        self.pooler = keras.layers.Dense(
            hidden_dim, activation="tanh", kernel_initializer=normal(),
            dtype=self.dtype_policy, name="pooler",
        )

    @property
    def blocks(self):
        return [getattr(self, f"block_{i}") for i in range(self.num_layers)]

    def build(self, input_shape=None):
        self.token_embedding.build((None, None))
        self.position_embedding.build((None, None))
        if self.segment_embedding is not None:
            self.segment_embedding.build((None, None))
        for block in self.blocks:
            block.build((None, None, self.hidden_dim))
        self.final_norm.build((None, None, self.hidden_dim))
        self.pooler.build((None, self.hidden_dim))
        self.built = True

    def call(self, inputs, training=None):
        token_ids = inputs["token_ids"]
        padding_mask = inputs["padding_mask"]
        length = ops.shape(token_ids)[1]
        x = self.token_embedding(token_ids) + self.position_embedding(ops.arange(length))[None]
        if self.segment_embedding is not None:
            x = x + self.segment_embedding(inputs["segment_ids"])
        x = self.embedding_dropout(x, training=training)
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask, training=training)
        x = self.final_norm(x)  # [B, T, C]
        return {"sequence_output": x, "pooled_output": self.pooler(x[:, 0])}

    def num_params(self):
        return sum(int(math.prod(w.shape)) for w in self.weights)

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
            num_segments=self.num_segments,
        )
        return config


@keras.saving.register_keras_serializable(package="tfchat")
class MaskedLMHead(keras.layers.Layer):
    """BERT's masked-LM head: gather the masked positions, then dense + GELU,
    LayerNorm, and logits against the token embedding (tied) plus a bias.

    Args:
        vocabulary_size: int V.
        hidden_dim: int C.
        layer_norm_epsilon: float.

    Call arguments:
        sequence_output: [B, T, C] encoder output.
        mask_positions: [B, P] int positions to predict.
        token_embeddings: [V, C] the encoder's token embedding matrix.

    Returns float32 logits [B, P, V].

    Example:
    ```python
    head = MaskedLMHead(vocabulary_size=100, hidden_dim=32)
    logits = head(encoded, positions, encoder.token_embedding.embeddings)
    ```
    """

    def __init__(self, vocabulary_size, hidden_dim, layer_norm_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, input_shape=None):
        self.transform = keras.layers.Dense(
            self.hidden_dim, kernel_initializer=normal(),
            dtype=self.dtype_policy, name="transform",
        )
        self.transform.build((None, None, self.hidden_dim))
        self.norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="norm"
        )
        self.norm.build((None, None, self.hidden_dim))
        self.output_bias = self.add_weight(
            shape=(self.vocabulary_size,), initializer="zeros", name="output_bias"
        )
        self.built = True

    def call(self, sequence_output, mask_positions, token_embeddings):
        x = tf.gather(sequence_output, tf.cast(mask_positions, tf.int32), batch_dims=1)  # [B, P, C]
        x = self.norm(keras.activations.gelu(self.transform(x), approximate=True))
        embeddings = ops.cast(token_embeddings, x.dtype)  # [V, C]
        logits = tf.einsum("bpc,vc->bpv", x, embeddings)
        return ops.cast(logits, "float32") + ops.cast(self.output_bias, "float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            hidden_dim=self.hidden_dim,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
