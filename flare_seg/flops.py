"""Floating-point operations of a forward pass, counted as the paper does (2 x MAC of convolutions)."""

from __future__ import annotations

import numpy as np


def conv_flops(model, input_shape_zyx) -> int:
    """2 x multiply-accumulates of every 3-D convolution for one ``(z, y, x)`` input (all its channels).

    Output shapes come from a symbolic pass (no computation), so any size can be counted.
    """
    import keras

    from flare_seg.training.ema import all_layers

    convs = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.Conv3D)]
    probe = keras.Model(model.inputs, [layer.output for layer in convs])
    channels = int(model.inputs[0].shape[-1])  # 1, or 2 with the anatomical channel
    specs = probe.compute_output_spec(keras.KerasTensor((1, *input_shape_zyx, channels)))
    total = 0
    for layer, spec in zip(convs, specs, strict=True):
        kernel = layer.kernel.shape  # (kz, ky, kx, c_in, c_out)
        voxels = int(np.prod(spec.shape[1:4]))
        total += 2 * int(np.prod(kernel)) * voxels
    return total
