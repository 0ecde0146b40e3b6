"""The reduced SpatialConfiguration-Net (seed 002, sections 2.2 and 4.2).

Local part: a 5-level, 32-filter U-Net on the 2 mm image giving one logit per label
(background + 4 organs). Spatial part at 1/4 resolution: the image and the local sigmoid maps are
average-pooled x4 (gradients into the local maps stopped), and one 4-level, 16-filter U-Net per
label predicts that label's spatial logit: the background's sees the image and all organ maps,
each organ's the image and the *other* organ maps. The spatial logits are upsampled x4 and
combined with the local ones (:class:`~flare_seg.models.layers.SCNCombine`). Exactly 1,270,090
parameters with the defaults.
"""

from __future__ import annotations

import keras
from keras import layers

from flare_seg.config import SegmenterConfig
from flare_seg.models.layers import LinearUpSampling3D, SCNCombine, SelectChannels, StopGradient
from flare_seg.models.presence import with_presence
from flare_seg.models.unet import unet, unet_features


def spatial_inputs(label: int, num_labels: int, image_channels: int = 1) -> list[int]:
    """Channels of [image channels..., local maps...] the spatial net of ``label`` sees: every image
    channel (the image, and the anatomical map when there is one), then the organ maps it may see."""
    organs = list(range(1, num_labels))
    seen = organs if label == 0 else [o for o in organs if o != label]
    return list(range(image_channels)) + [image_channels + o for o in seen]


def build_scn(config: SegmenterConfig) -> keras.Model:
    """Image ``(b, z, y, x, 1)`` -> ``{"prob", "local", "spatial"}``, each ``(b, z, y, x, labels)``.

    ``prob`` is the final per-label probability (float32), ``local`` and ``spatial`` are the two
    parts' logits (the loss needs all three). Sizes must be multiples of 32 (x4 pooling then a
    4-level U-Net). With ``config.presence_head``, ``prob`` is scaled by the organ-presence head
    and its logits are output ``"presence"`` ``(b, labels - 1)`` (:mod:`flare_seg.models.presence`).
    """
    dtype = keras.DTypePolicy(config.dtype_policy)
    n = config.num_labels
    f = config.spatial_downsample
    image = keras.Input(shape=(None, None, None, config.input_channels), name="image")
    local_logits, bottom = unet_features(image, config.local, n, "local", dtype)
    local_maps = layers.Activation("sigmoid", name="local_sigmoid", dtype="float32")(local_logits)
    local_maps = StopGradient(name="local_stop_gradient", dtype="float32")(local_maps)
    image_small = layers.AveragePooling3D(f, name="spatial_image_pool", dtype="float32")(image)
    maps_small = layers.AveragePooling3D(f, name="spatial_maps_pool", dtype="float32")(local_maps)
    stacked = layers.Concatenate(name="spatial_stack", dtype="float32")([image_small, maps_small])
    spatial = []
    for label in range(n):
        channels = spatial_inputs(label, n, config.input_channels)
        x = SelectChannels(channels, name=f"spatial{label}_inputs", dtype=dtype)(stacked)
        spatial.append(unet(x, config.spatial, 1, f"spatial{label}", dtype))
    spatial_small = layers.Concatenate(name="spatial_logits_small", dtype="float32")(spatial)
    spatial_logits = LinearUpSampling3D(f, name="spatial_upsample", dtype="float32")(spatial_small)
    prob = SCNCombine(config.combination, name="combine")(local_logits, spatial_logits)
    outputs = {"prob": prob, "local": local_logits, "spatial": spatial_logits}
    if config.presence_head:
        outputs = with_presence(outputs, bottom, n, config.local.leaky_alpha, dtype)
    return keras.Model(image, outputs, name="scn")
