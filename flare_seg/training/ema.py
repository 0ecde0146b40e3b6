"""Adam with an exponential moving average (EMA) of the weights and an EMA warm-up.

Keras' ``use_ema=True`` uses a constant decay, so a short run's average is dominated by the
initial weights for ~1/(1-decay) steps. Here the decay at step ``t`` is
``min(decay, (1 + t) / (10 + t))`` (as in TensorFlow's ``ExponentialMovingAverage(num_updates)``),
written with ``keras.ops`` so it works under every backend. The paper's code uses decay 0.999.

Besides the exporter's graph walk (``flare_seg/export.py`` reads ``_keras_history`` and
``_inbound_nodes`` to convert layer by layer), this module is the only place that touches Keras'
private API (``_model_variables_moving_average``, ``_update_model_variables_moving_average``,
``_trainable_variables``, ``_flatten_layers``); the Keras range these were tested with is pinned in
``setup.cfg``.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="flare_seg")
class AdamEMA(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with ``use_ema=True`` and an optional EMA warm-up."""

    def __init__(self, learning_rate=1e-4, ema_momentum: float = 0.999, ema_warmup: bool = True, **kwargs):
        kwargs.pop("use_ema", None)
        kwargs.setdefault("ema_overwrite_frequency", None)
        super().__init__(learning_rate=learning_rate, use_ema=True, ema_momentum=ema_momentum, **kwargs)
        self.ema_warmup = bool(ema_warmup)

    def ema_decay(self):
        """The decay used at the current step (a backend scalar)."""
        decay = ops.convert_to_tensor(self.ema_momentum, dtype="float32")
        if self.ema_warmup:
            t = ops.cast(self.iterations, "float32")
            decay = ops.minimum(decay, (1.0 + t) / (10.0 + t))
        return decay

    def _update_model_variables_moving_average(self, trainable_variables):
        decay = self.ema_decay()
        for var, average in zip(trainable_variables, self._model_variables_moving_average, strict=True):
            if average is None:
                continue
            d = ops.cast(decay, var.dtype)
            average.assign(ops.add(ops.multiply(d, average), ops.multiply(ops.subtract(1.0, d), var)))

    def get_config(self):
        config = super().get_config()
        config.pop("use_ema", None)
        return {**config, "ema_warmup": self.ema_warmup}


def ema_variables(optimizer) -> list:
    """The optimizer's EMA copies, in the order of its trainable variables."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer wraps the real one
    return list(inner._model_variables_moving_average)


def all_layers(model) -> list:
    """Every layer of ``model``, nested models' layers included (Keras' own traversal)."""
    return list(model._flatten_layers(include_self=False))


def reset_ema_to_weights(model) -> None:
    """After loading initial weights, start the EMA from them too (not from the random init)."""
    inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    for var, average in zip(inner._trainable_variables, ema_variables(model.optimizer), strict=True):
        if average is not None:
            average.assign(var)


def swap_ema_weights(model, optimizer) -> None:
    """Exchange the model's trainable weights with their EMA copies (call twice to undo)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    for var, average in zip(inner._trainable_variables, ema_variables(optimizer), strict=True):
        if average is None:
            continue
        current = ops.convert_to_numpy(var)
        var.assign(average)
        average.assign(current)
