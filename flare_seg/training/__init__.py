"""Training: data and samplers, augmentation, losses, the EMA optimizer, the fit loop, carbon tracking."""
