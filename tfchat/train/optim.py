"""AdamW with linear warmup and cosine decay to a floor, as nanoGPT trains."""

import keras


def learning_rate_schedule(train_config):
    """0 -> learning_rate over warmup_steps, then cosine to min_learning_rate
    at max_steps (nanoGPT's `get_lr`, with Keras' own schedule)."""
    t = train_config
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        warmup_target=t.learning_rate,
        warmup_steps=t.warmup_steps,
        decay_steps=max(t.max_steps - t.warmup_steps, 1),
        alpha=t.min_learning_rate / t.learning_rate,
    )


class AdamW(keras.optimizers.AdamW):
    """Keras' AdamW for gradients that `train_step` already summed across
    replicas.

    Keras 3 clips gradients (`global_clipnorm`) before it all-reduces them,
    so under MirroredStrategy each replica clipped the norm of its own
    partial gradient, not of the real one (reproduced: the loss drifted from
    the single-device run's once clipping engaged). tfchat's `train_step`
    sums gradients first, so clipping sees the global gradient, and this
    subclass skips the now-redundant second all-reduce. It overrides a
    private Keras hook: setup.py pins the Keras minor version it was tested
    on, `_check_all_reduce_hook` refuses a Keras that no longer calls it
    (which would silently clip per replica again), and
    tests/test_distribute.py checks MirroredStrategy against one device.
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)


def _check_all_reduce_hook():
    """Fails at import if Keras' TensorFlow optimizer no longer routes its
    update through `_all_reduce_sum_gradients`, the hook AdamW overrides."""
    update = getattr(keras.optimizers.AdamW, "_backend_update_step", None)
    hooked = update is not None and "_all_reduce_sum_gradients" in update.__code__.co_names
    if not hooked:
        raise ImportError(
            f"tfchat's AdamW needs Keras' private optimizer hook "
            f"_all_reduce_sum_gradients, which Keras {keras.__version__} does not "
            "call (tfchat is tested on Keras 3.15; pip install 'keras>=3.15,<3.16')."
        )


_check_all_reduce_hook()


def build_optimizer(train_config, model):
    """AdamW for `model` (already built), with weight decay only on matmul
    kernels: not on norms, biases or embeddings."""
    t = train_config
    optimizer = AdamW(
        learning_rate=learning_rate_schedule(t),
        weight_decay=t.weight_decay,
        beta_1=t.beta_1,
        beta_2=t.beta_2,
        global_clipnorm=t.grad_clip or None,
    )
    no_decay = [
        v
        for v in model.trainable_variables
        if len(v.shape) < 2 or "embedding" in v.path
    ]
    optimizer.exclude_from_weight_decay(var_list=no_decay)
    if t.precision == "mixed_float16" or t.on_nonfinite == "skip":
        # float16 gradients underflow without loss scaling. The wrapper also
        # skips any step whose gradients are not finite, correctly under
        # every strategy, which is what on_nonfinite=skip needs (in float32
        # the scale it keeps only ever matters for that skip).
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
