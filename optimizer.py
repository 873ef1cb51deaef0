"""The optimizer a GPT trains with: which parameters decay, and the fastest AdamW this device has."""
from __future__ import annotations

import torch

from model import GPT


def make_optimizer(model: GPT, learning_rate: float, weight_decay: float,
                   betas: tuple[float, float]) -> tuple[torch.optim.AdamW, str]:
    """(AdamW, 'fused' or 'foreach'), decaying matrices and embeddings only (not biases or norm gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True), "fused"
    except (RuntimeError, TypeError):  # fused kernels are missing for this device type
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas), "foreach"
