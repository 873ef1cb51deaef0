"""The library behind the scripts at the repository root: data, checkpoints, hardware, optimizers, export.

model.py (the architecture, torch alone) stays at the root beside the scripts that users run.
"""
