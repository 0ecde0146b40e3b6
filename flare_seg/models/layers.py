"""Custom Keras 3 layers, backend-neutral (``keras.ops`` only) and serializable."""

from __future__ import annotations

import math

import keras
from keras import layers, ops

PACKAGE = "flare_seg"


@keras.saving.register_keras_serializable(package=PACKAGE)
class LinearUpSampling3D(layers.Layer):
    """Trilinear upsampling by an integer ``factor`` of a ``(batch, z, y, x, c)`` tensor.

    Half-pixel alignment with edge clamping, as ``tf.image.resize`` / ``torch`` ``align_corners=False``:
    output voxel ``j`` samples input coordinate ``(j + 0.5) / factor - 0.5``. Keras'
    ``UpSampling3D`` is nearest-neighbour only; the paper uses linear upsampling. Separable: each
    axis is a fixed blend of a voxel with its lower or upper neighbour, interleaved.
    """

    def __init__(self, factor: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def _upsample_axis(self, x, axis: int):
        f = self.factor
        before = (slice(None),) * axis
        first, last = x[before + (slice(0, 1),)], x[before + (slice(-1, None),)]
        prev = ops.concatenate([first, x[before + (slice(None, -1),)]], axis=axis)
        nxt = ops.concatenate([x[before + (slice(1, None),)], last], axis=axis)
        parts = []
        for k in range(f):
            offset = (k + 0.5) / f - 0.5
            neighbour = prev if offset < 0 else nxt
            parts.append(x * (1.0 - abs(offset)) + neighbour * abs(offset))
        stacked = ops.stack(parts, axis=axis + 1)
        shape = ops.shape(x)
        new_shape = list(shape[:axis]) + [shape[axis] * f] + list(shape[axis + 1 :])
        return ops.reshape(stacked, new_shape)

    def call(self, inputs):
        x = inputs
        for axis in (1, 2, 3):
            x = self._upsample_axis(x, axis)
        return x

    def compute_output_shape(self, input_shape):
        dims = [None if d is None else d * self.factor for d in input_shape[1:4]]
        return (input_shape[0], *dims, input_shape[4])

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package=PACKAGE)
class StopGradient(layers.Layer):
    """Identity forward, no gradient backward (the SCN's spatial part must not train the local net)."""

    def call(self, inputs):
        return ops.stop_gradient(inputs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SelectChannels(layers.Layer):
    """Keep the listed channels (last axis) in the given order."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = [int(c) for c in channels]

    def call(self, inputs):
        return ops.take(inputs, self.channels, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.channels))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SCNCombine(layers.Layer):
    """Final SCN probability from the local and spatial logits (no parameters; float32).

    ``"multiply"``: sigmoid(local) * sigmoid(spatial), the SCN papers' formulation.
    ``"entropy_blend"``: u * sigmoid(local) + (1 - u) * sigmoid(spatial), with u the spatial
    net's binary entropy normalised to [0, 1]: trust the coarse spatial net where it is sure and
    the fine local net where it is not.
    """

    def __init__(self, mode: str = "multiply", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in ("multiply", "entropy_blend"):
            raise ValueError(f"SCNCombine mode must be 'multiply' or 'entropy_blend', got {mode!r}")
        self.mode = mode

    def call(self, local_logits, spatial_logits):
        p_local = ops.sigmoid(ops.cast(local_logits, "float32"))
        p_spatial = ops.sigmoid(ops.cast(spatial_logits, "float32"))
        if self.mode == "multiply":
            return p_local * p_spatial
        eps = 1e-6
        q = ops.clip(p_spatial, eps, 1.0 - eps)
        entropy = -(q * ops.log(q) + (1.0 - q) * ops.log(1.0 - q)) / math.log(2.0)
        return entropy * p_local + (1.0 - entropy) * p_spatial

    def compute_output_shape(self, local_logits_shape, spatial_logits_shape):
        return local_logits_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
