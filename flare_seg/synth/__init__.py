"""Synthetic CT: abdominal phantoms with FLARE labels, parametric or drawn around real label maps."""
