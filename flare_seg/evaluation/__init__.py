"""Evaluation: DSC/NSD metrics with FLARE's rules, the folder harness, the efficiency protocol, QC pictures."""
