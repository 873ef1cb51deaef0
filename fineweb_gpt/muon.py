"""Muon (Keller Jordan 2024): momentum, then each update matrix replaced by its nearest semi-orthogonal
matrix, computed with a Newton-Schulz iteration.

Why not torch.optim.Muon: in torch 2.13 it runs the iteration in bf16 only (slower than fp32 on CPUs and
GPUs without native bf16), one matrix at a time, and under DDP every rank repeats all of it. heavyball
(3.2) shards only FSDP-sharded parameters and rounds to bf16 itself; NVIDIA's emerging-optimizers was not
installable here. So this file does what the training needs, in pieces that the variants of Muon replace
one at a time:

  newton_schulz(G, coefficients, ...)    the iteration on a stack of matrices; `coefficients` is the
                                         (a, b, c) of each step: Keller Jordan's five equal steps, or
                                         Polar Express's schedule (NS_SCHEDULES, group["ns_coefficients"])
  group["momentum"]                      a per-group value that a schedule sets before each step (train.py:
                                         the momentum warmup of fineweb_gpt/schedule.py)
  Muon.orthogonalise(stack, group)       the update of a stack of same-shape matrices, on this rank's share
  Muon.apply(param, update, group)       after the gather, on every rank, with self.state[param] at hand:
                                         NorMuon's per-neuron normalisation (its second moments are state,
                                         so every rank's state stays complete for saving), then the weight
                                         decay (plain or cautious) and the step

Same-shape matrices are stacked and orthogonalised in one batched call. Under torch.distributed each rank
orthogonalises its share of every stack and the shares are gathered (all_gather), as nanochat's and
modded-nanogpt's distributed Muon do; the momentum buffers stay on every rank (the gradients are already
averaged there), so the state dict does not depend on the number of ranks and a resume is exact.
"""
from __future__ import annotations

import math
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist

# Keller Jordan's quintic coefficients, five steps (torch.optim.Muon's; modded-nanogpt's before Polar Express)
JORDAN_COEFFICIENTS = ((3.4445, -4.7750, 2.0315),) * 5
# Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932): a different quintic for each step, each
# the best for the interval the singular values lie in after the steps before it, so they end nearer 1. These
# are the five steps modded-nanogpt and nanochat use, computed for a safety factor of 2e-2 (cushion 2): the
# matrix is divided by (1 + 2e-2) times its Frobenius norm, as modded-nanogpt does: a margin so that, rounding
# included, no singular value starts above the interval the first, steep polynomial was fitted on (nanochat: 1e-2).
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 2e-2
# the muon_ns key's choices: (coefficients of each step, safety factor of the normalisation)
NS_SCHEDULES = {"jordan": (JORDAN_COEFFICIENTS, 0.0), "polar_express": (POLAR_EXPRESS_COEFFICIENTS, POLAR_EXPRESS_SAFETY)}
# NorMuon's second-moment decay (Li et al. 2025, arXiv:2510.05491), 0.9 as modded-nanogpt and nanochat use it
NORMUON_BETA2 = 0.9
EPS = 1e-7


def newton_schulz(G: torch.Tensor, coefficients: tuple[tuple[float, float, float], ...] = JORDAN_COEFFICIENTS,
                  dtype: torch.dtype = torch.bfloat16, eps: float = EPS, safety: float = 0.0) -> torch.Tensor:
    """An approximately semi-orthogonal matrix U S' V^T (S' near 1) for each matrix G = U S V^T of the stack
    G (..., rows, cols), computed in `dtype`: each step X <- a X + (b A + c A^2) X with A = X X^T. The stack
    is first divided by (1 + safety) times each matrix's Frobenius norm."""
    X = G.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        X = X.mT
    norm = X.norm(dim=(-2, -1), keepdim=True) * (1 + safety)  # times exactly 1 without a safety factor
    X = X / norm.clamp(min=eps)  # spectral norm <= Frobenius norm: every singular value <= 1 / (1 + safety)
    for a, b, c in coefficients:
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters. lr, weight_decay, momentum, nesterov, ns_coefficients, ns_safety, eps,
    adjust_lr_fn and the variants (normuon, normuon_beta2, cautious_wd) are group values (saved in the state
    dict; a state dict saved without some of them gets this optimizer's values); ns_dtype and the process
    group belong to the machine, not the run, so they are constructor arguments and not saved.
    adjust_lr_fn='original' scales each matrix's step by sqrt(max(1, rows / cols)), as torch.optim.Muon's
    option of that name. normuon: NorMuon's per-neuron normalisation of the update (see normuon());
    cautious_wd: decay only where the step moves the weight towards zero (see apply())."""

    def __init__(self, params, lr: float = 0.02, weight_decay: float = 0.0, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple = JORDAN_COEFFICIENTS, ns_safety: float = 0.0,
                 eps: float = EPS, adjust_lr_fn: str | None = "original", normuon: bool = False,
                 normuon_beta2: float = NORMUON_BETA2, cautious_wd: bool = False,
                 ns_dtype: torch.dtype = torch.bfloat16, distributed: bool | None = None):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=tuple(tuple(c) for c in ns_coefficients), ns_safety=ns_safety, eps=eps,
                        adjust_lr_fn=adjust_lr_fn, normuon=normuon, normuon_beta2=normuon_beta2,
                        cautious_wd=cautious_wd)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon updates matrices only; got a parameter of shape {tuple(p.shape)}")
        self.ns_dtype = ns_dtype
        if distributed is None:
            distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank, self.world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    @contextmanager
    def local(self) -> Iterator[None]:
        """Every matrix orthogonalised here, no collectives, during the block (batch_size=auto's probe, where
        the ranks do not step in lockstep)."""
        saved, (self.rank, self.world_size) = (self.rank, self.world_size), (0, 1)
        try:
            yield
        finally:
            self.rank, self.world_size = saved

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # a state dict of torch.optim.Muon: one (a, b, c) for ns_steps steps
            if "ns_steps" in group:
                group["ns_coefficients"] = (tuple(group.pop("ns_coefficients")),) * group.pop("ns_steps")
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pending = []  # (params of a stack, gathered updates, async work): applied once all are in flight
        for group in self.param_groups:
            for params in self.stacks(group).values():
                updates = self.momentum_updates(params, group)
                pending.append((params, group, *self.orthogonalise_share(updates, group)))
        for params, group, gathered, work in pending:
            if work is not None:
                work.wait()
            for p, update in zip(params, gathered):
                self.apply(p, update, group)
        return loss

    @staticmethod
    def stacks(group: dict) -> dict[tuple, list[torch.Tensor]]:
        """The group's parameters with gradients, by (shape, dtype, device), in their order."""
        stacks = defaultdict(list)
        for p in group["params"]:
            if p.grad is not None:
                stacks[(p.shape, p.dtype, p.device)].append(p)
        return stacks

    def momentum_updates(self, params: list[torch.Tensor], group: dict) -> torch.Tensor:
        """Update the momentum buffers; the (Nesterov) momentum updates, stacked (n, rows, cols)."""
        grads = [p.grad for p in params]
        bufs = []
        for p, g in zip(params, grads):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(g, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
        if group["nesterov"]:
            return torch.stack([g.lerp(b, group["momentum"]) for g, b in zip(grads, bufs)])
        return torch.stack(bufs)

    def orthogonalise_share(self, updates: torch.Tensor, group: dict) -> tuple[list[torch.Tensor], object]:
        """Orthogonalise this rank's share of the stack and gather every rank's: (updates in the stack's
        order, the all_gather still in flight or None)."""
        n = updates.size(0)
        if self.world_size == 1:
            return list(self.orthogonalise(updates, group).to(updates.dtype)), None
        per_rank = math.ceil(n / self.world_size)
        padded = torch.cat([updates, updates.new_zeros(per_rank * self.world_size - n, *updates.shape[1:])])
        mine = self.orthogonalise(padded[self.rank * per_rank:(self.rank + 1) * per_rank], group).to(updates.dtype)
        shares = [torch.empty_like(mine) for _ in range(self.world_size)]
        work = dist.all_gather(shares, mine.contiguous(), async_op=True)
        return [s[i] for s in shares for i in range(per_rank)][:n], work

    def orthogonalise(self, stack: torch.Tensor, group: dict) -> torch.Tensor:
        """The update of each matrix in a stack (n, rows, cols) of momentum updates."""
        return newton_schulz(stack, group["ns_coefficients"], self.ns_dtype, group["eps"], group["ns_safety"])

    def apply(self, param: torch.Tensor, update: torch.Tensor, group: dict) -> None:
        """(NorMuon's normalisation,) decoupled weight decay, then the step, scaled for the matrix's shape.
        Cautious weight decay (Chen et al. 2025, arXiv:2510.12402; modded-nanogpt, nanochat) decays only the
        weights whose step moves them towards zero: where the update (subtracted from the weight) has the
        weight's sign, zero counting as either."""
        if group["normuon"]:
            update = self.normuon(param, update, group)
        lr, decay = group["lr"], group["lr"] * group["weight_decay"]
        rows, cols = param.shape
        scale = math.sqrt(max(1.0, rows / cols)) if group["adjust_lr_fn"] == "original" else 1.0
        if group["cautious_wd"]:
            param.mul_(torch.where(update * param >= 0, 1 - decay, 1.0))  # the mask of the weights before the step
        else:
            param.mul_(1 - decay)
        param.add_(update, alpha=-lr * scale)

    def normuon(self, param: torch.Tensor, update: torch.Tensor, group: dict) -> torch.Tensor:
        """NorMuon (Li et al. 2025, arXiv:2510.05491): the orthogonalised update divided, per neuron, by the
        root of an EMA (normuon_beta2) of its mean square, then rescaled to the update's Frobenius norm, so that
        only how the step is shared between neurons changes. The statistics run along the longer side (one per
        row of a tall or square matrix, one per column of a wide one), as nanochat does for the same (out, in)
        layout. The EMA starts at zero without bias correction, as theirs: the rescaling cancels its scale."""
        state = self.state[param]
        rows, cols = update.shape
        reduce_dim = -1 if rows >= cols else -2
        u = update.float()
        mean_square = u.square().mean(dim=reduce_dim, keepdim=True)  # (rows, 1) or (1, cols)
        if "second_moment" not in state:
            state["second_moment"] = torch.zeros_like(mean_square)
        second_moment = state["second_moment"]
        second_moment.lerp_(mean_square, 1 - group["normuon_beta2"])
        normalised = u * second_moment.clamp(min=1e-10).rsqrt()
        return (normalised * (u.norm() / normalised.norm().clamp(min=1e-10))).to(update.dtype)
