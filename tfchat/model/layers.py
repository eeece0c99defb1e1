"""Transformer layers: causal self-attention with a KV cache, and a pre-norm block.

Shape letters used throughout: B batch, T query length, S key length (the
cache length when generating), H heads, D head width, C = H * D model width.
"""

import math

import keras
import tensorflow as tf
from keras import ops


def normal(stddev=0.02):
    """GPT-2's and BERT's initializer for every matmul and embedding."""
    return keras.initializers.RandomNormal(stddev=stddev)


def _check_heads(num_heads, hidden_dim):
    if hidden_dim % num_heads:
        raise ValueError(
            "hidden_dim must be divisible by num_heads. Received: "
            f"hidden_dim={hidden_dim}, num_heads={num_heads}"
        )


def _in_xla_context():
    # TensorFlow has no public API for this, so this uses a private helper
    # (pinned by setup.py's tensorflow range); tests/test_generate.py runs
    # generation with and without XLA and tests/test_export.py checks the
    # exported op set.
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _write_cache(cache, start, update):
    """Writes `update` [B, T, H, D] into `cache` [B, S, H, D] at positions
    `start .. start + T - 1`; returns the new cache.

    Not `ops.slice_update`: with TensorFlow that is the XLA-only op
    `XlaDynamicUpdateSlice`, which runs only where XLA compiles it, and stock
    TF Serving runs with XLA off. `TensorStridedSliceUpdate` is a core op, and
    was also faster inside a `tf.while_loop` on 2 CPU cores (30 vs 41 us per
    update of a [4, 256, 4, 32] cache).

    Under XLA (`jit_compile=True` generation) the reverse holds: XLA cannot
    compile a strided-slice update with a dynamic start, and its own dynamic
    update slice is what it wants, so the op follows the compilation context.
    """
    start = tf.cast(start, tf.int32)
    if _in_xla_context():
        return ops.slice_update(cache, [0, start, 0, 0], update)
    length = tf.shape(update)[1]
    return tf.raw_ops.TensorStridedSliceUpdate(
        input=cache,
        begin=tf.stack([0, start, 0, 0]),
        end=tf.stack([0, start + length, 0, 0]),
        strides=[1, 1, 1, 1],
        value=update,
        # Only axis 1 is sliced; the other axes are taken whole.
        begin_mask=0b1101,
        end_mask=0b1101,
    )


@keras.saving.register_keras_serializable(package="tfchat")
class CausalSelfAttention(keras.layers.Layer):
    """Multi-head self-attention with fused QKV and an optional causal mask.

    Args:
        num_heads: int. Number of attention heads H.
        hidden_dim: int. Model width C; must be divisible by `num_heads`.
        dropout: float. Dropout on attention probabilities and the output.
        causal: bool. Mask future positions (GPT); False for BERT.
        output_stddev: float. Init stddev of the output projection (GPT-2
            scales it by 1/sqrt(2 * num_layers) to keep the residual stream
            from growing with depth).

    Call arguments:
        x: [B, T, C] inputs.
        cache: optional [B, 2, S, H, D] keys and values of positions already
            seen. When given, this call's keys/values are written into it at
            `cache_update_index` and attention runs over all S positions
            (query t may see keys up to `cache_update_index + t`).
        cache_update_index: int scalar, position of x's first token.
        padding_mask: optional [B, S] bool/int, 1 for real keys.

    Returns:
        [B, T, C], or ([B, T, C], updated cache) when `cache` is given.

    Example:
    ```python
    attention = CausalSelfAttention(num_heads=4, hidden_dim=128)
    y = attention(keras.random.normal((2, 10, 128)))   # [2, 10, 128]
    ```
    """

    def __init__(
        self,
        num_heads,
        hidden_dim,
        dropout=0.0,
        causal=True,
        output_stddev=0.02,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_heads(num_heads, hidden_dim)
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.dropout = dropout
        self.causal = causal
        self.output_stddev = output_stddev
        self.head_dim = hidden_dim // num_heads

    def build(self, input_shape):
        self.qkv = keras.layers.Dense(
            3 * self.hidden_dim,
            kernel_initializer=normal(0.02),
            dtype=self.dtype_policy,
            name="qkv",
        )
        self.qkv.build(input_shape)
        self.proj = keras.layers.Dense(
            self.hidden_dim,
            kernel_initializer=normal(self.output_stddev),
            dtype=self.dtype_policy,
            name="proj",
        )
        self.proj.build(input_shape)
        self.attention_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.output_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def call(
        self,
        x,
        cache=None,
        cache_update_index=0,
        padding_mask=None,
        training=None,
    ):
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        qkv = ops.reshape(
            self.qkv(x), (batch, length, 3, self.num_heads, self.head_dim)
        )
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, H, D]
        if cache is not None:
            k = _write_cache(cache[:, 0], cache_update_index, k)  # [B, S, H, D]
            v = _write_cache(cache[:, 1], cache_update_index, v)
            cache = ops.stack([k, v], axis=1)
        q = ops.transpose(q, (0, 2, 1, 3))  # [B, H, T, D]
        k = ops.transpose(k, (0, 2, 3, 1))  # [B, H, D, S]
        v = ops.transpose(v, (0, 2, 1, 3))  # [B, H, S, D]
        scale = 1.0 / math.sqrt(self.head_dim)
        scores = ops.matmul(q * ops.cast(scale, q.dtype), k)  # [B, H, T, S]
        # Softmax in float32 even under mixed precision, for stability.
        scores = ops.cast(scores, "float32")
        mask = self._attention_mask(
            length, ops.shape(k)[-1], cache_update_index, padding_mask
        )
        if mask is not None:
            scores = ops.where(mask, scores, -1e9)
        probs = ops.cast(ops.softmax(scores, axis=-1), self.compute_dtype)
        probs = self.attention_dropout(probs, training=training)
        y = ops.matmul(probs, v)  # [B, H, T, D]
        y = ops.reshape(ops.transpose(y, (0, 2, 1, 3)), (batch, length, self.hidden_dim))
        y = self.output_dropout(self.proj(y), training=training)
        if cache is not None:
            return y, cache
        return y

    def _attention_mask(self, length, key_length, start, padding_mask):
        """[T, S] or [B, 1, T, S] bool mask of the keys each query may see."""
        mask = None
        if self.causal:
            query_pos = ops.arange(length) + ops.cast(start, "int32")
            key_pos = ops.arange(key_length)
            mask = key_pos[None, :] <= query_pos[:, None]  # [T, S]
        if padding_mask is not None:
            keys = ops.cast(padding_mask, "bool")[:, None, None, :]  # [B,1,1,S]
            mask = keys if mask is None else ops.logical_and(mask, keys)
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            hidden_dim=self.hidden_dim,
            dropout=self.dropout,
            causal=self.causal,
            output_stddev=self.output_stddev,
        )
        return config


@keras.saving.register_keras_serializable(package="tfchat")
class TransformerBlock(keras.layers.Layer):
    """Pre-LayerNorm Transformer block: x + attn(ln(x)), then x + mlp(ln(x)).

    Args:
        num_heads, hidden_dim, dropout, causal: as in `CausalSelfAttention`.
        intermediate_dim: int. Width of the MLP's hidden layer.
        output_stddev: float. Init stddev of both residual projections.
        layer_norm_epsilon: float.

    Call arguments are those of `CausalSelfAttention`; returns [B, T, C], or
    ([B, T, C], cache) when a cache is given.
    """

    def __init__(
        self,
        num_heads,
        hidden_dim,
        intermediate_dim,
        dropout=0.0,
        causal=True,
        output_stddev=0.02,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # Fail at construction, not at the first call that builds attention.
        _check_heads(num_heads, hidden_dim)
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.causal = causal
        self.output_stddev = output_stddev
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, input_shape):
        def norm(name):
            layer = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
            )
            layer.build(input_shape)
            return layer

        self.attention_norm = norm("attention_norm")
        self.attention = CausalSelfAttention(
            self.num_heads,
            self.hidden_dim,
            dropout=self.dropout,
            causal=self.causal,
            output_stddev=self.output_stddev,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.attention.build(input_shape)
        self.mlp_norm = norm("mlp_norm")
        self.mlp_in = keras.layers.Dense(
            self.intermediate_dim,
            kernel_initializer=normal(0.02),
            dtype=self.dtype_policy,
            name="mlp_in",
        )
        self.mlp_in.build(input_shape)
        self.mlp_out = keras.layers.Dense(
            self.hidden_dim,
            kernel_initializer=normal(self.output_stddev),
            dtype=self.dtype_policy,
            name="mlp_out",
        )
        self.mlp_out.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        self.mlp_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def call(
        self, x, cache=None, cache_update_index=0, padding_mask=None, training=None
    ):
        attended = self.attention(
            self.attention_norm(x),
            cache=cache,
            cache_update_index=cache_update_index,
            padding_mask=padding_mask,
            training=training,
        )
        if cache is not None:
            attended, cache = attended
        x = x + attended
        # GPT-2's tanh approximation of GELU: cheaper, and what GPT-2 trained with.
        hidden = keras.activations.gelu(self.mlp_in(self.mlp_norm(x)), approximate=True)
        x = x + self.mlp_dropout(self.mlp_out(hidden), training=training)
        if cache is not None:
            return x, cache
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            hidden_dim=self.hidden_dim,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
            causal=self.causal,
            output_stddev=self.output_stddev,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
