"""U-Net segmenters: the plain U-Net baseline and the attention-gate U-Net (seed 003, OrganSegNet).

Both use the SCN's local network settings (``SegmenterConfig.local``: levels, filters, dropout),
so the plain U-Net *is* the SCN without its spatial part, and the attention U-Net differs from
it only by the gates. An additive attention gate (Oktay et al., as seed 003 writes it) on each
skip connection: ``theta = W_theta * x`` on the skip features, ``phi = W_phi * g`` on the gating
signal from the coarser level (1x1x1 convolutions, ``filters // 2`` channels; ``phi`` is
computed at the coarse level and upsampled linearly), ``psi = sigmoid(W_psi * relu(theta + phi))``
and the skip becomes ``x * psi``. Output contract as the SCN's minus the spatial part:
``{"prob": sigmoid(logits), "local": logits}``, float32, ``(b, z, y, x, labels)``.
"""

from __future__ import annotations

import keras
from keras import layers

from flare_seg.config import NetworkConfig, SegmenterConfig
from flare_seg.models.layers import LinearUpSampling3D
from flare_seg.models.presence import with_presence
from flare_seg.models.unet import unet_features


def attention_gate(skip, gating, intermediate: int, name: str, dtype=None):
    """``skip * sigmoid(W_psi relu(W_theta skip + up(W_phi gating)))``; ``gating`` is one level coarser."""
    theta = layers.Conv3D(intermediate, 1, name=f"{name}_theta", dtype=dtype)(skip)
    phi = layers.Conv3D(intermediate, 1, name=f"{name}_phi", dtype=dtype)(gating)
    phi = LinearUpSampling3D(2, name=f"{name}_phi_upsample", dtype=dtype)(phi)
    f = layers.Activation("relu", name=f"{name}_relu", dtype=dtype)(layers.Add(name=f"{name}_add", dtype=dtype)(
        [theta, phi]))
    psi = layers.Conv3D(1, 1, activation="sigmoid", name=f"{name}_psi", dtype=dtype)(f)
    return layers.Multiply(name=f"{name}_gate", dtype=dtype)([skip, psi])


def gated_unet(x, net: NetworkConfig, num_outputs: int, name: str, gates: bool, dtype=None):
    """:func:`flare_seg.models.unet.unet_features` (logits, bottom features) with (``gates``) or
    without attention gates on the skips."""
    def gate(skip, gating, level):
        return attention_gate(skip, gating, max(1, net.filters // 2), f"{name}_att{level}", dtype)

    return unet_features(x, net, num_outputs, name, dtype, skip_gate=gate if gates else None)


def build_unet_segmenter(config: SegmenterConfig) -> keras.Model:
    """Image ``(b, z, y, x, channels)`` -> ``{"prob", "local"}`` (+ ``"presence"`` with
    ``config.presence_head``); ``config.architecture`` picks the gates."""
    dtype = keras.DTypePolicy(config.dtype_policy)
    image = keras.Input(shape=(None, None, None, config.input_channels), name="image")
    gates = config.architecture == "attention_unet"
    logits, bottom = gated_unet(image, config.local, config.num_labels, "local", gates, dtype)
    prob = layers.Activation("sigmoid", name="prob_sigmoid", dtype="float32")(logits)
    outputs = {"prob": prob, "local": logits}
    if config.presence_head:
        outputs = with_presence(outputs, bottom, config.num_labels, config.local.leaky_alpha, dtype)
    return keras.Model(image, outputs, name=config.architecture)
