"""flare-seg: fast, low-memory abdominal organ segmentation in CT.

Implements Thaler, Bischof, Payer, Štern (FLARE21): a localization U-Net at 6 mm finds the organ
box, a reduced SpatialConfiguration-Net segments liver, kidney, spleen and pancreas at 2 mm inside
it, both trained with an exponential moving average of the weights.

Array convention, everywhere in this package: volumes are NumPy arrays indexed ``(z, y, x)``;
network tensors are channels-last ``(batch, z, y, x, channels)``. Only :mod:`flare_seg.io` knows
SimpleITK's ``(x, y, z)`` order. Research software, not a medical device.
"""

__version__ = "0.1.0"
