"""LoRA: low-rank adapters on a GPT's Dense layers, trained while every base
weight stays frozen, then merged into the base weights for serving.

Keras' `Dense.enable_lora(rank, lora_alpha)` already does the adapter math:
the layer's kernel becomes `W + (alpha / rank) * A @ B`, with A random and
B zero (so training starts exactly at the base model), A and B in float32,
and W frozen. It leaves the layer's bias, and of course every other layer,
trainable; `enable_lora` here freezes all of those, so an optimizer built
afterwards holds (and a step updates) the adapters only.

The adapters are attributes of their layers (`lora_kernel_a/b`), so a run's
`tf.train.Checkpoint` saves and restores them with the rest of the model.

Example:
```python
adapters = enable_lora(model.backbone, rank=4, alpha=8)
model.trainable_variables == adapters      # only A and B of each target
...train...
merge_lora(model.backbone, plain_model.backbone)  # plain = same shape, no LoRA
```
"""

import numpy as np

# How to reach each adaptable Dense layer from a TransformerBlock.
_TARGETS = {
    "qkv": lambda block: block.attention.qkv,
    "proj": lambda block: block.attention.proj,
    "mlp_in": lambda block: block.mlp_in,
    "mlp_out": lambda block: block.mlp_out,
    # SwiGLU's gate projection (blocks with mlp="swiglu" only).
    "mlp_gate": lambda block: block.mlp_gate,
}
# What enable_lora adapts when no targets are named.
DEFAULT_TARGETS = ("qkv", "proj", "mlp_in", "mlp_out")


def target_layers(backbone, targets=DEFAULT_TARGETS):
    """The Dense layers named by `targets` in every block of `backbone`."""
    unknown = [t for t in targets if t not in _TARGETS]
    if unknown:
        raise ValueError(
            f"LoRA targets must be among {', '.join(_TARGETS)}. Received: {unknown}"
        )
    if "mlp_gate" in targets and any(block.mlp != "swiglu" for block in backbone.blocks):
        raise ValueError("LoRA target mlp_gate needs a backbone with mlp='swiglu'.")
    return [_TARGETS[t](block) for block in backbone.blocks for t in targets]


def enable_lora(backbone, rank, alpha=0.0, targets=DEFAULT_TARGETS):
    """Adds rank-`rank` adapters to the target layers of a built backbone and
    freezes every other weight. Returns the adapter variables."""
    adapters = []
    for layer in target_layers(backbone, targets):
        layer.enable_lora(rank, lora_alpha=alpha or rank)
        adapters += [layer.lora_kernel_a, layer.lora_kernel_b]
    keep = {id(v) for v in adapters}
    for variable in backbone.weights:
        variable.trainable = id(variable) in keep
    return adapters


def lora_layers(backbone):
    """Every Dense layer of `backbone` that has adapters."""
    return [
        layer for layer in backbone._flatten_layers(include_self=False)
        if getattr(layer, "lora_enabled", False)
    ]


def merge_lora(adapted, plain):
    """Copies `adapted`'s weights into `plain`, a backbone of the same shape
    without adapters, folding each adapter into its kernel:
    W' = W + (alpha / rank) * A @ B. `plain` then computes what `adapted`
    does, as one ordinary Dense layer per target."""
    merged = {}
    for layer in lora_layers(adapted):
        # In float32 (Keras' `kernel` property would give the compute dtype).
        a, b = np.asarray(layer.lora_kernel_a), np.asarray(layer.lora_kernel_b)
        scale = layer.lora_alpha / layer.lora_rank
        merged[layer._kernel.path] = np.asarray(layer._kernel) + scale * (a @ b)
    values = {
        v.path: merged.get(v.path, v.numpy())
        for v in adapted.weights
        if not v.path.endswith(("lora_kernel_a", "lora_kernel_b"))
    }
    targets = {v.path: v for v in plain.weights}
    if values.keys() != targets.keys():
        missing = sorted(set(values) ^ set(targets))[:3]
        raise ValueError(
            f"The backbones differ in shape or names. Received differences: {missing}"
        )
    for path, value in values.items():
        targets[path].assign(value)
