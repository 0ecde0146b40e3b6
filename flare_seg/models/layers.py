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
class GlobalBatchDropout(layers.Dropout):
    """``keras.layers.Dropout`` whose mask is the one-device mask of the *global* batch.

    Under ``tf.distribute`` every replica runs the layer on its share of the batch with the same
    seed-generator state, so Keras' ``Dropout`` draws the same mask on every replica: two
    replicas of one sample each do not see the masks of a two-sample batch on one device, and
    the loss drifted 0.1-0.2 % from the one-device run within a few steps (2 logical CPUs,
    TensorFlow 2.21). Here each replica draws the mask of the whole global batch, as
    TensorFlow's ``stateless_dropout`` does (``uniform >= rate``, kept values scaled by
    ``1 / (1 - rate)``), and keeps its own slice. With one replica (every JAX run: its
    data-parallel step sees the global batch) this *is* ``Dropout``. No variables besides the
    seed state, like ``Dropout``, so weights files load either way; identity at inference.
    """

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        if noise_shape is not None:  # the replica slice below draws one value per element
            raise ValueError(f"GlobalBatchDropout takes no noise_shape, got {noise_shape!r}")
        super().__init__(rate, seed=seed, **kwargs)

    def call(self, inputs, training=False):
        from flare_seg.runtime import replica_share

        replicas, index = replica_share()
        if not training or self.rate == 0 or replicas == 1:
            return super().call(inputs, training=training)
        return self.replica_slice(inputs, replicas, index)

    def replica_slice(self, inputs, replicas: int, index):
        """Dropout of ``inputs`` as rows ``index * b .. (index + 1) * b`` of a ``replicas * b`` batch."""
        shape = ops.shape(inputs)
        uniform = keras.random.uniform((shape[0] * replicas, *shape[1:]), dtype=inputs.dtype,
                                       seed=self.seed_generator)
        start = [index * shape[0]] + [0] * (len(inputs.shape) - 1)
        keep = ops.greater_equal(ops.slice(uniform, start, shape), ops.cast(self.rate, inputs.dtype))
        scaled = ops.multiply(inputs, ops.cast(1.0 / (1.0 - self.rate), inputs.dtype))
        return ops.where(keep, scaled, ops.zeros_like(inputs))


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


@keras.saving.register_keras_serializable(package=PACKAGE)
class PresenceScale(layers.Layer):
    """Scale each organ's probability by the probability that the organ is in the input (seed 001's
    attention module), and move the removed mass to the background; no parameters, float32.

    ``prob`` ``(b, z, y, x, labels)`` holds independent per-label probabilities (channel 0 the
    background), ``presence_logits`` ``(b, labels - 1)`` one logit per organ, ``q = sigmoid``:

    * organ ``c``: ``p_c' = p_c q_c`` (at this voxel *and* in this scan);
    * background: ``p_bg' = 1 - (1 - p_bg) prod_c (1 - p_c (1 - q_c))``, "background or a
      suppressed organ": the rule :func:`flare_seg.training.partial.recalibrate_independent` uses
      for unannotated organs, here with each organ's suppressed share ``p_c (1 - q_c)``.

    Every output stays in [0, 1], ``q = 1`` returns ``prob`` unchanged, and a suppressed organ's
    voxels go to the background under argmax rather than to whichever other organ is next.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, prob, presence_logits):
        prob = ops.cast(prob, "float32")
        q = ops.sigmoid(ops.cast(presence_logits, "float32"))[:, None, None, None, :]
        organs = prob[..., 1:]
        kept = ops.prod(1.0 - organs * (1.0 - q), axis=-1, keepdims=True)
        background = 1.0 - (1.0 - prob[..., :1]) * kept
        return ops.concatenate([background, organs * q], axis=-1)

    def compute_output_shape(self, prob_shape, presence_logits_shape):
        return prob_shape
