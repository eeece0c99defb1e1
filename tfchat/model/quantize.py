"""Weight-only int8 quantization of a model's matmuls, for cheaper serving.

Keras 3's own int8 scheme (`Model.quantize`) does what tfchat needs, with
its activation quantizer turned off: every `Dense` kernel (attention QKV
and output, MLP, a separate LM head) becomes int8 with one abs-max scale
per output column, and every `Embedding` table int8 with one scale per row
(the tied LM head reuses it: `GPT._lm_head`). The computation stays in
floating point: int8 weights are cast and divided by their scales at each
matmul, so the graph holds only core ops (Cast, MatMul, RealDiv, Gather),
which stock TF Serving runs without XLA. Activations are not quantized:
Keras' default int8 mode would also quantize each matmul's inputs to int8
per token, which costs accuracy for little speed on CPUs without int8
matmul kernels in TensorFlow's graph path.

    quantize_int8(run.backbone)      # in place; returns the scales' summary
"""

import keras
import numpy as np
from keras.quantizers import Int8QuantizationConfig

METHOD = ("int8 weight-only (keras.quantizers.Int8QuantizationConfig, activation "
          "quantizer off): Dense kernels per output column, Embedding tables per row, "
          "abs-max scales; q = round(w * scale), w ~= q / scale")


def _quantizable(layer):
    return isinstance(layer, (keras.layers.Dense, keras.layers.Embedding))


def quantize_int8(backbone):
    """Quantizes `backbone`'s Dense and Embedding weights to int8 in place
    (it must be built, with no LoRA adapters left: merge them first).
    Returns {layer path: summary of its scales}, for the export's metadata."""
    if any("lora" in w.path for w in backbone.weights):
        raise ValueError("Merge the LoRA adapters (tfchat.lora merge) before quantizing.")
    backbone.quantize(config=Int8QuantizationConfig(activation_quantizer=None),
                      filters=_quantizable)
    return scale_summary(backbone)


def scale_summary(backbone):
    """{weight path: {shape, scales, min, median, max}} of every int8 weight."""
    scales = {w.path: w for w in backbone.weights if w.path.endswith("_scale")}
    summary = {}
    for weight in backbone.weights:
        if weight.dtype != "int8":
            continue
        scale = np.asarray(scales[weight.path + "_scale"].numpy(), np.float64)
        summary[weight.path] = {
            "shape": list(weight.shape), "scales": int(scale.size),
            "min": float(scale.min()), "median": float(np.median(scale)),
            "max": float(scale.max()),
        }
    return summary
