"""The U-Net used for localization and for both parts of the SCN (seed 002, section 4.2).

Each block: two 3x3x3 convolutions (He normal), each followed by leaky ReLU (alpha 0.1) and
dropout (0.1). Average pooling x2 down, linear upsampling x2 up, concatenation skips, a constant
number of filters at every level, a block on the way down *and* on the way up at every level
(the bottom included), and a final linear 1x1x1 convolution with one filter per label. With 5
levels and 32 filters on one input channel and 2 outputs this has exactly 637,474 parameters.
"""

from __future__ import annotations

import keras
from keras import layers

from flare_seg.config import LocalizerConfig, NetworkConfig
from flare_seg.models.layers import GlobalBatchDropout, LinearUpSampling3D


def conv_block(x, filters: int, net: NetworkConfig, name: str, dtype=None):
    for k in (1, 2):
        x = layers.Conv3D(filters, 3, padding="same", kernel_initializer="he_normal",
                          name=f"{name}_conv{k}", dtype=dtype)(x)
        x = layers.LeakyReLU(negative_slope=net.leaky_alpha, name=f"{name}_act{k}", dtype=dtype)(x)
        x = GlobalBatchDropout(net.dropout_rate, name=f"{name}_drop{k}", dtype=dtype)(x)
    return x


def unet(x, net: NetworkConfig, num_outputs: int, name: str, dtype=None, skip_gate=None):
    """Apply a U-Net to tensor ``x``; returns float32 logits with ``num_outputs`` channels.

    ``skip_gate(skip, gating, level)``, if given, filters each skip connection with the coarser
    level's features before the concatenation (seed 003's attention gates)."""
    return unet_features(x, net, num_outputs, name, dtype, skip_gate)[0]


def unet_features(x, net: NetworkConfig, num_outputs: int, name: str, dtype=None, skip_gate=None):
    """:func:`unet`, returning ``(logits, bottom)``: ``bottom`` is the coarsest level's feature map
    (the output of the bottom block on the way up, ``{name}_up{levels - 1}``), what a head on the
    whole input's content reads (:mod:`flare_seg.models.presence`)."""
    skips = []
    for level in range(net.levels):
        if level > 0:
            x = layers.AveragePooling3D(2, name=f"{name}_pool{level}", dtype=dtype)(x)
        x = conv_block(x, net.filters, net, f"{name}_down{level}", dtype)
        skips.append(x)
    x = conv_block(x, net.filters, net, f"{name}_up{net.levels - 1}", dtype)
    bottom = x
    for level in reversed(range(net.levels - 1)):
        skip = skips[level] if skip_gate is None else skip_gate(skips[level], x, level)
        x = LinearUpSampling3D(2, name=f"{name}_upsample{level}", dtype=dtype)(x)
        x = layers.Concatenate(name=f"{name}_skip{level}", dtype=dtype)([skip, x])
        x = conv_block(x, net.filters, net, f"{name}_up{level}", dtype)
    logits = layers.Conv3D(num_outputs, 1, kernel_initializer="he_normal", name=f"{name}_logits",
                           dtype="float32")(x)
    return logits, bottom


def build_localizer(config: LocalizerConfig) -> keras.Model:
    """The localization U-Net: image ``(b, z, y, x, 1)`` -> ``{"logits": (b, z, y, x, 2)}`` (float32)."""
    dtype = keras.DTypePolicy(config.dtype_policy)
    image = keras.Input(shape=(None, None, None, 1), name="image")
    logits = unet(image, config.network, config.num_labels, "loc", dtype)
    return keras.Model(image, {"logits": logits}, name="localizer")
