"""Bundled weights of flare-seg, installed as ``flare_seg.bundled_weights`` (see ``MODEL_CARD.md``).

``loc/`` and ``seg/`` each hold ``config.json`` (network + preprocessing), the EMA weights
``model.weights.h5`` and its ``model.weights.h5.sha256``.
"""
