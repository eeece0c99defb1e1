"""Transformer layers: causal self-attention with a KV cache, and a pre-norm block.

Besides GPT-2's layout (the defaults) the layers take what other decoders'
checkpoints need: RMSNorm (also scaled by 1 + weight), rotary position
embeddings (with Llama 3's frequency scaling), SwiGLU and GeGLU MLPs,
grouped-query attention, heads of their own width, RMSNorm on queries and
keys, a sliding attention window and optional biases.

Shape letters used throughout: B batch, T query length, S key length (the
cache length when generating), H query heads, K key/value heads (H for
multi-head attention, fewer for grouped-query), D head width (C / H unless
given), C model width, F MLP width, W the sliding window.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfchat.config import GATED_MLPS, MLPS, NORMS


def normal(stddev=0.02):
    """GPT-2's and BERT's initializer for every matmul and embedding."""
    return keras.initializers.RandomNormal(stddev=stddev)


def _check_heads(num_heads, hidden_dim):
    if hidden_dim % num_heads:
        raise ValueError(
            "hidden_dim must be divisible by num_heads. Received: "
            f"hidden_dim={hidden_dim}, num_heads={num_heads}"
        )




def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"{name} must be one of {', '.join(choices)}. Received: {name}={value!r}"
        )


def _check_kv_heads(num_heads, num_kv_heads):
    if num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise ValueError(
            "num_heads must be divisible by num_kv_heads. Received: "
            f"num_heads={num_heads}, num_kv_heads={num_kv_heads}"
        )


@keras.saving.register_keras_serializable(package="tfchat")
class RMSNorm(keras.layers.Layer):
    """Root-mean-square normalization: x / rms(x) * scale, with no mean
    subtraction and no bias; computed in float32 under mixed precision.

    Args:
        epsilon: float. Added to the mean square before the square root.
        unit_offset: bool. Scale by (1 + scale), the weight starting at zero,
            as checkpoints that store the offset from one do.

    Call: x [..., C] -> [..., C] in the compute dtype.
    """

    def __init__(self, epsilon=1e-6, unit_offset=False, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.unit_offset = unit_offset

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],),
            initializer="zeros" if self.unit_offset else "ones",
            dtype=self.variable_dtype,
        )

    def call(self, x):
        x = ops.cast(x, "float32")
        mean_square = ops.mean(ops.square(x), axis=-1, keepdims=True)  # [..., 1]
        x = x * ops.rsqrt(mean_square + self.epsilon)
        scale = ops.cast(self.scale, "float32")
        if self.unit_offset:
            scale = 1.0 + scale
        return ops.cast(x * scale, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, unit_offset=self.unit_offset)
        return config


def make_norm(kind, epsilon, dtype, name):
    """A `layernorm`, `rmsnorm` or `rmsnorm_plus_one` layer, not yet built."""
    check_choice("norm", kind, NORMS)
    if kind != "layernorm":
        return RMSNorm(epsilon=epsilon, unit_offset=kind == "rmsnorm_plus_one", dtype=dtype,
                       name=name)
    return keras.layers.LayerNormalization(epsilon=epsilon, dtype=dtype, name=name)


def rope_inverse_frequencies(
    head_dim,
    theta=10000.0,
    scaling_factor=1.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_positions=8192,
):
    """The D/2 rotary inverse frequencies theta^(-2i/D), float32 numpy.

    With `scaling_factor != 1`, Llama 3's rope scaling: frequencies whose
    wavelength exceeds `original_max_positions / low_freq_factor` are divided
    by `scaling_factor`, those shorter than `original_max_positions /
    high_freq_factor` stay, and the ones between are interpolated smoothly
    (the formula of Llama 3.1 and keras-hub's `LlamaRotaryEmbedding`).
    """
    exponent = np.arange(0, head_dim, 2, dtype="float32") / np.float32(head_dim)
    inverse = (1.0 / np.power(np.float32(theta), exponent)).astype("float32")
    if scaling_factor == 1.0:
        return inverse
    low_freq_wavelength = original_max_positions / low_freq_factor
    high_freq_wavelength = original_max_positions / high_freq_factor
    wavelength = 2 * math.pi / inverse
    scaled = np.where(wavelength > low_freq_wavelength, inverse / scaling_factor, inverse)
    smooth = (original_max_positions / wavelength - low_freq_factor) / (
        high_freq_factor - low_freq_factor
    )
    smoothed = (1 - smooth) * (scaled / scaling_factor) + smooth * scaled
    medium = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength)
    return np.where(medium, smoothed, scaled).astype("float32")


def segment_positions(segment_ids):
    """Each token's position within its segment: [B, T] int -> [B, T] int32,
    0 at every segment's first token.

    Segments are runs of equal ids (a packed block, `tfchat.data.pipeline`);
    a token's position is the number of earlier tokens of its run. Counted
    with a [B, T, T] comparison rather than a cumulative scan, so the shape
    is static and XLA compiles it; it costs 1 / (H * D) of attention's
    own [B, H, T, T] work.
    """
    same = _same_segment(segment_ids)  # [B, T, T]
    length = ops.shape(segment_ids)[1]
    earlier = ops.arange(length)[None, :] <= ops.arange(length)[:, None]  # [T, T]
    return ops.sum(ops.cast(ops.logical_and(same, earlier[None]), "int32"), axis=-1) - 1


def _same_segment(segment_ids):
    """[B, T] -> [B, T, T] bool: query t and key s are in one segment."""
    return segment_ids[:, :, None] == segment_ids[:, None, :]


def apply_rope(x, inverse_frequencies, start, positions=None):
    """Rotates x [B, T, N, D] by the angles of positions `start .. start+T-1`,
    or of `positions` [B, T] when given (packed segments restart at 0), in
    the rotate-half convention of Llama/HF/keras-hub: dims i and i + D/2
    form a pair. Angles in float32; the result in x's dtype."""
    if positions is None:
        length = ops.shape(x)[1]
        positions = (ops.arange(length) + ops.cast(start, "int32"))[None, :]  # [1, T]
    positions = ops.cast(positions, "float32")
    freq = positions[..., None] * ops.convert_to_tensor(inverse_frequencies)  # [B, T, D/2]
    angles = ops.concatenate([freq, freq], axis=-1)[:, :, None, :]  # [B, T, 1, D]
    cos = ops.cast(ops.cos(angles), x.dtype)
    sin = ops.cast(ops.sin(angles), x.dtype)
    x1, x2 = ops.split(x, 2, axis=-1)  # [B, T, N, D/2] each
    rotated = ops.concatenate([-x2, x1], axis=-1)  # [B, T, N, D]
    return x * cos + rotated * sin


def _in_xla_context():
    # TensorFlow has no public API for this, so this uses a private helper
    # (pinned by setup.py's tensorflow range); tests/test_generate.py runs
    # generation with and without XLA and tests/test_export.py checks the
    # exported op set.
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _write_cache(cache, start, update):
    """Writes `update` [B, T, K, D] into `cache` [B, S, K, D] at positions
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
    """Multi-head (or grouped-query) self-attention with fused QKV and an
    optional causal mask.

    Args:
        num_heads: int. Number of query heads H.
        hidden_dim: int. Model width C; must be divisible by `num_heads`.
        dropout: float. Dropout on attention probabilities and the output.
        causal: bool. Mask future positions (GPT); False for BERT.
        output_stddev: float. Init stddev of the output projection (GPT-2
            scales it by 1/sqrt(2 * num_layers) to keep the residual stream
            from growing with depth).
        num_kv_heads: int or None. Key/value heads K (grouped-query attention:
            each serves H / K consecutive query heads); None means H.
        rope: bool. Rotate q and k by their positions (rotary embeddings).
        rope_theta, rope_scaling_factor, rope_low_freq_factor,
            rope_high_freq_factor, rope_original_max_positions: the rotary
            frequencies, see `rope_inverse_frequencies`.
        qkv_bias: bool. Bias on the fused q/k/v projection.
        use_bias: bool. Bias on the output projection.
        head_dim: int or None. Width D of each head; None means C / H. When
            H * D differs from C the output projection maps H * D back to C.
        sliding_window: int. With `causal`, query t sees keys t - W + 1 .. t
            only (itself and the W - 1 before it); 0 means every earlier key.
        qk_norm: bool. An RMSNorm of width D on each head's queries and keys
            (weights shared across heads), before rope.
        norm, norm_epsilon: the kind (`make_norm`) and epsilon of those.

    The fused `qkv` Dense is (H + 2K) * D wide: q, then k, then v.

    Call arguments:
        x: [B, T, C] inputs.
        cache: optional [B, 2, S, K, D] keys and values of positions already
            seen (keys already rotated). When given, this call's keys/values
            are written into it at `cache_update_index` and attention runs over
            all S positions (query t may see keys up to `cache_update_index +
            t`); rotary positions start at `cache_update_index`.
        cache_update_index: int scalar, position of x's first token.
        padding_mask: optional [B, S] bool/int, 1 for real keys.
        segment_ids: optional [B, T] int, without a cache: the sequence
            each token belongs to in a packed block. A query sees only keys
            of its own segment (with `causal`, a block-diagonal causal
            mask), and rotary positions restart at 0 in each segment, so
            every segment is computed as if it had the row to itself.

        return_attention: bool. Also return the attention probabilities
            [B, H, T, S] (float32 softmax in the compute dtype, before
            dropout), as a last output. Off by default; the default call
            computes nothing more.

    Returns:
        [B, T, C], or ([B, T, C], updated cache) when `cache` is given;
        with `return_attention`, the probabilities follow as a last element.

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
        num_kv_heads=None,
        rope=False,
        rope_theta=10000.0,
        rope_scaling_factor=1.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_positions=8192,
        qkv_bias=True,
        use_bias=True,
        head_dim=None,
        sliding_window=0,
        qk_norm=False,
        norm="rmsnorm",
        norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not head_dim:
            _check_heads(num_heads, hidden_dim)
        if sliding_window < 0:
            raise ValueError(f"sliding_window must not be negative. Received: {sliding_window}")
        num_kv_heads = num_kv_heads or num_heads
        _check_kv_heads(num_heads, num_kv_heads)
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.dropout = dropout
        self.causal = causal
        self.output_stddev = output_stddev
        self.num_kv_heads = num_kv_heads
        self.rope = rope
        self.rope_theta = rope_theta
        self.rope_scaling_factor = rope_scaling_factor
        self.rope_low_freq_factor = rope_low_freq_factor
        self.rope_high_freq_factor = rope_high_freq_factor
        self.rope_original_max_positions = rope_original_max_positions
        self.qkv_bias = qkv_bias
        self.use_bias = use_bias
        self.head_dim = head_dim or hidden_dim // num_heads
        self.sliding_window = sliding_window
        self.qk_norm = qk_norm
        self.norm = norm
        self.norm_epsilon = norm_epsilon
        self.query_width = num_heads * self.head_dim
        if rope and self.head_dim % 2:
            raise ValueError(f"rope needs an even head width. Received: {self.head_dim}")

    def build(self, input_shape):
        kv_width = self.num_kv_heads * self.head_dim
        self.qkv = keras.layers.Dense(
            self.query_width + 2 * kv_width,
            use_bias=self.qkv_bias,
            kernel_initializer=normal(0.02),
            dtype=self.dtype_policy,
            name="qkv",
        )
        self.qkv.build(input_shape)
        self.proj = keras.layers.Dense(
            self.hidden_dim,
            use_bias=self.use_bias,
            kernel_initializer=normal(self.output_stddev),
            dtype=self.dtype_policy,
            name="proj",
        )
        self.proj.build(tuple(input_shape[:-1]) + (self.query_width,))
        if self.qk_norm:
            head_shape = (None, None, None, self.head_dim)
            self.q_norm = make_norm(self.norm, self.norm_epsilon, self.dtype_policy, "q_norm")
            self.q_norm.build(head_shape)
            self.k_norm = make_norm(self.norm, self.norm_epsilon, self.dtype_policy, "k_norm")
            self.k_norm.build(head_shape)
        self.attention_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.output_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        if self.rope:
            self.inverse_frequencies = rope_inverse_frequencies(
                self.head_dim, self.rope_theta, self.rope_scaling_factor,
                self.rope_low_freq_factor, self.rope_high_freq_factor,
                self.rope_original_max_positions,
            )  # [D/2], a constant, not a weight

    def call(
        self,
        x,
        cache=None,
        cache_update_index=0,
        padding_mask=None,
        segment_ids=None,
        training=None,
        return_attention=False,
    ):
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids are for packed training blocks; "
                             "generation with a cache runs one sequence per row")
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        qkv = self.qkv(x)  # [B, T, (H + 2K) * D]
        kv_width = self.num_kv_heads * self.head_dim
        width = self.query_width
        q = ops.reshape(
            qkv[..., :width], (batch, length, self.num_heads, self.head_dim)
        )  # [B, T, H, D]
        k = ops.reshape(
            qkv[..., width : width + kv_width],
            (batch, length, self.num_kv_heads, self.head_dim),
        )  # [B, T, K, D]
        v = ops.reshape(
            qkv[..., width + kv_width :],
            (batch, length, self.num_kv_heads, self.head_dim),
        )  # [B, T, K, D]
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            positions = None if segment_ids is None else segment_positions(segment_ids)
            q = apply_rope(q, self.inverse_frequencies, cache_update_index, positions)
            k = apply_rope(k, self.inverse_frequencies, cache_update_index, positions)
        if cache is not None:
            k = _write_cache(cache[:, 0], cache_update_index, k)  # [B, S, K, D]
            v = _write_cache(cache[:, 1], cache_update_index, v)
            cache = ops.stack([k, v], axis=1)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            # Key/value head j serves query heads j * groups .. (j + 1) * groups - 1.
            k = ops.repeat(k, groups, axis=2)  # [B, S, H, D]
            v = ops.repeat(v, groups, axis=2)
        q = ops.transpose(q, (0, 2, 1, 3))  # [B, H, T, D]
        k = ops.transpose(k, (0, 2, 3, 1))  # [B, H, D, S]
        v = ops.transpose(v, (0, 2, 1, 3))  # [B, H, S, D]
        scale = 1.0 / math.sqrt(self.head_dim)
        scores = ops.matmul(q * ops.cast(scale, q.dtype), k)  # [B, H, T, S]
        # Softmax in float32 even under mixed precision, for stability.
        scores = ops.cast(scores, "float32")
        mask = self._attention_mask(
            length, ops.shape(k)[-1], cache_update_index, padding_mask, segment_ids
        )
        if mask is not None:
            scores = ops.where(mask, scores, -1e9)
        probs = ops.cast(ops.softmax(scores, axis=-1), self.compute_dtype)
        # What return_attention hands back: the probabilities as computed,
        # before dropout (a Python flag; the default graph has no extra op).
        attention = probs
        probs = self.attention_dropout(probs, training=training)
        y = ops.matmul(probs, v)  # [B, H, T, D]
        y = ops.reshape(ops.transpose(y, (0, 2, 1, 3)), (batch, length, self.query_width))
        y = self.output_dropout(self.proj(y), training=training)
        outputs = (y,) + ((cache,) if cache is not None else ())
        if return_attention:
            outputs += (attention,)
        return outputs if len(outputs) > 1 else y

    def _attention_mask(self, length, key_length, start, padding_mask, segment_ids=None):
        """[T, S] or [B, 1, T, S] bool mask of the keys each query may see."""
        mask = None
        if self.causal:
            query_pos = ops.arange(length) + ops.cast(start, "int32")
            key_pos = ops.arange(key_length)
            mask = key_pos[None, :] <= query_pos[:, None]  # [T, S]
            if self.sliding_window:
                # A band: t - W < s. Positions are the row's (with a cache,
                # the cache's), and a packed segment is a contiguous run of
                # them, so distances within a segment are its own.
                recent = key_pos[None, :] > query_pos[:, None] - self.sliding_window
                mask = ops.logical_and(mask, recent)
        if padding_mask is not None:
            keys = ops.cast(padding_mask, "bool")[:, None, None, :]  # [B,1,1,S]
            mask = keys if mask is None else ops.logical_and(mask, keys)
        if segment_ids is not None:
            same = _same_segment(segment_ids)[:, None]  # [B, 1, T, S]
            mask = same if mask is None else ops.logical_and(mask, same)
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            hidden_dim=self.hidden_dim,
            dropout=self.dropout,
            causal=self.causal,
            output_stddev=self.output_stddev,
            num_kv_heads=self.num_kv_heads,
            rope=self.rope,
            rope_theta=self.rope_theta,
            rope_scaling_factor=self.rope_scaling_factor,
            rope_low_freq_factor=self.rope_low_freq_factor,
            rope_high_freq_factor=self.rope_high_freq_factor,
            rope_original_max_positions=self.rope_original_max_positions,
            qkv_bias=self.qkv_bias,
            use_bias=self.use_bias,
            head_dim=self.head_dim,
            sliding_window=self.sliding_window,
            qk_norm=self.qk_norm,
            norm=self.norm,
            norm_epsilon=self.norm_epsilon,
        )
        return config


# The rotary settings a block hands to its attention unchanged.
ROPE_ARGS = (
    "rope_theta", "rope_scaling_factor", "rope_low_freq_factor",
    "rope_high_freq_factor", "rope_original_max_positions",
)


@keras.saving.register_keras_serializable(package="tfchat")
class TransformerBlock(keras.layers.Layer):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    Args:
        num_heads, hidden_dim, dropout, causal: as in `CausalSelfAttention`.
        intermediate_dim: int. Width F of the MLP's hidden layer.
        output_stddev: float. Init stddev of both residual projections.
        layer_norm_epsilon: float. Epsilon of both norms.
        norm: "layernorm" (GPT-2) | "rmsnorm" | "rmsnorm_plus_one" (`make_norm`).
        mlp: "gelu" (GPT-2: mlp_out(gelu(mlp_in(x)))) | "swiglu"
            (mlp_out(silu(mlp_gate(x)) * mlp_in(x)), SiLU in float32) |
            "geglu" (the same with tanh-approximated GELU).
        num_kv_heads, rope, rope_*, qkv_bias, head_dim, sliding_window,
            qk_norm: as in `CausalSelfAttention` (its q/k norms are `norm`).
        use_bias: bool. Bias on the attention output and the MLP's layers.

    Call arguments are those of `CausalSelfAttention`; returns [B, T, C], or
    ([B, T, C], cache) when a cache is given, and with `return_attention`
    the attention probabilities [B, H, T, S] as a last element.
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
        norm="layernorm",
        mlp="gelu",
        num_kv_heads=None,
        rope=False,
        rope_theta=10000.0,
        rope_scaling_factor=1.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_positions=8192,
        qkv_bias=True,
        use_bias=True,
        head_dim=None,
        sliding_window=0,
        qk_norm=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # Fail at construction, not at the first call that builds attention.
        if not head_dim:
            _check_heads(num_heads, hidden_dim)
        num_kv_heads = num_kv_heads or num_heads
        _check_kv_heads(num_heads, num_kv_heads)
        check_choice("norm", norm, NORMS)
        check_choice("mlp", mlp, MLPS)
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.causal = causal
        self.output_stddev = output_stddev
        self.layer_norm_epsilon = layer_norm_epsilon
        self.norm = norm
        self.mlp = mlp
        self.num_kv_heads = num_kv_heads
        self.rope = rope
        self.rope_theta = rope_theta
        self.rope_scaling_factor = rope_scaling_factor
        self.rope_low_freq_factor = rope_low_freq_factor
        self.rope_high_freq_factor = rope_high_freq_factor
        self.rope_original_max_positions = rope_original_max_positions
        self.qkv_bias = qkv_bias
        self.use_bias = use_bias
        self.head_dim = head_dim or hidden_dim // num_heads
        self.sliding_window = sliding_window
        self.qk_norm = qk_norm

    def build(self, input_shape):
        def norm(name):
            layer = make_norm(self.norm, self.layer_norm_epsilon, self.dtype_policy, name)
            layer.build(input_shape)
            return layer

        self.attention_norm = norm("attention_norm")
        self.attention = CausalSelfAttention(
            self.num_heads,
            self.hidden_dim,
            dropout=self.dropout,
            causal=self.causal,
            output_stddev=self.output_stddev,
            num_kv_heads=self.num_kv_heads,
            rope=self.rope,
            qkv_bias=self.qkv_bias,
            use_bias=self.use_bias,
            head_dim=self.head_dim,
            sliding_window=self.sliding_window,
            qk_norm=self.qk_norm,
            norm=self.norm,
            norm_epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="attention",
            **{name: getattr(self, name) for name in ROPE_ARGS},
        )
        self.attention.build(input_shape)
        self.mlp_norm = norm("mlp_norm")

        def dense(width, stddev, name):
            return keras.layers.Dense(
                width, use_bias=self.use_bias, kernel_initializer=normal(stddev),
                dtype=self.dtype_policy, name=name,
            )

        if self.mlp in GATED_MLPS:
            self.mlp_gate = dense(self.intermediate_dim, 0.02, "mlp_gate")
            self.mlp_gate.build(input_shape)
        self.mlp_in = dense(self.intermediate_dim, 0.02, "mlp_in")  # SwiGLU's "up"
        self.mlp_in.build(input_shape)
        self.mlp_out = dense(self.hidden_dim, self.output_stddev, "mlp_out")  # "down"
        self.mlp_out.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        self.mlp_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def call(
        self, x, cache=None, cache_update_index=0, padding_mask=None, segment_ids=None,
        training=None, return_attention=False,
    ):
        attended = self.attention(
            self.attention_norm(x),
            cache=cache,
            cache_update_index=cache_update_index,
            padding_mask=padding_mask,
            segment_ids=segment_ids,
            training=training,
            return_attention=return_attention,
        )
        attention = None
        if return_attention:
            attended, attention = attended[:-1], attended[-1]
            attended = attended if cache is not None else attended[0]
        if cache is not None:
            attended, cache = attended
        x = x + attended
        normed = self.mlp_norm(x)
        if self.mlp in GATED_MLPS:
            gate = ops.cast(self.mlp_gate(normed), "float32")  # [B, T, F]
            if self.mlp == "swiglu":
                gate = ops.silu(gate)
            else:
                gate = keras.activations.gelu(gate, approximate=True)
            hidden = ops.cast(gate, self.compute_dtype) * self.mlp_in(normed)
        else:
            # GPT-2's tanh approximation of GELU: cheaper, and what GPT-2 trained with.
            hidden = keras.activations.gelu(self.mlp_in(normed), approximate=True)
        x = x + self.mlp_dropout(self.mlp_out(hidden), training=training)
        outputs = (x,) + ((cache,) if cache is not None else ())
        if return_attention:
            outputs += (attention,)
        return outputs if len(outputs) > 1 else x

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
            norm=self.norm,
            mlp=self.mlp,
            num_kv_heads=self.num_kv_heads,
            rope=self.rope,
            qkv_bias=self.qkv_bias,
            use_bias=self.use_bias,
            head_dim=self.head_dim,
            sliding_window=self.sliding_window,
            qk_norm=self.qk_norm,
            **{name: getattr(self, name) for name in ROPE_ARGS},
        )
        return config
