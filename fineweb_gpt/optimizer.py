"""The optimizers a GPT trains with, and which parameter goes where.

adamw: GPT-2's recipe. One fused AdamW; matrices and embeddings decay, biases and norm gains do not.
muon:  the modern recipe (modded-nanogpt, nanochat). Muon (fineweb_gpt/muon.py) for the 2-D weights inside the
       blocks (its update is the orthogonalised momentum, so every direction of a matrix moves at the
       same rate); AdamW for the token embedding, the output head, and the biases and norm gains, each
       group with its own learning rate.

Each group's lr is its peak learning rate; train.py's schedule scales every group by the same factor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fineweb_gpt import hardware
from fineweb_gpt.muon import NS_SCHEDULES, Muon
from fineweb_gpt import report
from model import GPT

OPTIMIZERS = ("adamw", "muon")
# The AdamW learning rates of the muon recipe are stated for n_embd=768 and scaled by sqrt(768 / n_embd)
# (nanochat's rule), so a narrower model gets proportionally larger steps without retuning.
REFERENCE_WIDTH = 768
# x0_lambdas' two scalar groups as nanochat's setup_optimizer trains them (scalar_lr 0.5, not scaled by width):
# the x0 weights at 0.5 with a slower first moment (beta1 0.96), the residual weights at 0.5 * 0.01 with a
# weight decay of 0.05 that pulls them slowly towards 0 (nanochat gpt.py, commit 92d63d4)
X0_LAMBDAS = dict(lr=0.5, betas=(0.96, 0.95), weight_decay=0.0)
RESID_LAMBDAS = dict(lr=0.005, betas=(0.8, 0.95), weight_decay=0.05)


@dataclass
class OptimizerSettings:
    name: str = "adamw"
    learning_rate: float = 6e-4     # adamw: every parameter; muon: the block matrices
    weight_decay: float = 0.1       # on the matrices (and, for adamw, the embeddings)
    betas: tuple[float, float] = (0.9, 0.95)
    embedding_lr: float = 0.3       # muon recipe's AdamW groups, at n_embd=768
    head_lr: float = 0.004
    scalar_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_ns_dtype: str = "auto"     # Newton-Schulz dtype: bf16 where the device computes it natively, else fp32
    muon_momentum_start: float = 0.85  # the momentum warmup's start (train.py sets the momentum each update)
    muon_momentum_warmup: int = 0      # its steps (0 = constant muon_momentum)
    muon_ns: str = "jordan"         # Newton-Schulz coefficients: a key of muon.NS_SCHEDULES
    muon_normuon: bool = False      # NorMuon's per-neuron normalisation
    muon_cautious_wd: bool = False  # decay only the weights the step moves towards zero


class OptimizerSet:
    """Several torch optimizers stepped as one: the interface the training loop and GradScaler use
    (param_groups, step, zero_grad, state_dict, load_state_dict)."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, this run uses {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def param_groups(model: GPT, s: OptimizerSettings) -> list[dict]:
    """The named parameter groups: each parameter exactly once, with its learning rate and weight decay."""
    t = model.transformer
    params = [p for p in dict.fromkeys(model.parameters()) if p.requires_grad]  # a tied weight once
    if s.name == "adamw":
        return [{"name": "decayed", "params": [p for p in params if p.dim() >= 2], "lr": s.learning_rate,
                 "weight_decay": s.weight_decay},
                {"name": "not decayed", "params": [p for p in params if p.dim() < 2], "lr": s.learning_rate,
                 "weight_decay": 0.0}]
    scale = (REFERENCE_WIDTH / model.config.n_embd) ** 0.5
    head = model.lm_head.weight  # with tied embeddings also the token embedding: the head's rate applies
    # value-embedding tables train as the token embedding does (modded-nanogpt: one Adam for wte and them)
    embeddings = [p for p in [t.wte.weight, *t.wpe.parameters(), *model.value_embeds.parameters()]
                  if p is not head]  # wpe: none under rope
    matrices = [p for block in t.h for p in block.parameters() if p.dim() == 2]
    x0_lambdas = [p for name, p in model.x0_mix.named_parameters() if name == "x0_lambdas"]  # none when off
    resid_lambdas = [p for name, p in model.x0_mix.named_parameters() if name == "resid_lambdas"]
    taken = {id(p) for p in [head, *embeddings, *matrices, *x0_lambdas, *resid_lambdas]}
    scalars = [p for p in params if id(p) not in taken]  # norms, biases, value-embedding mixes, U-net weights
    return [{"name": "muon: block matrices", "params": matrices, "lr": s.learning_rate, "weight_decay": s.weight_decay},
            {"name": "adamw: embeddings", "params": embeddings, "lr": s.embedding_lr * scale, "weight_decay": 0.0},
            {"name": "adamw: output head", "params": [head], "lr": s.head_lr * scale, "weight_decay": 0.0},
            {"name": "adamw: norms and biases", "params": scalars, "lr": s.scalar_lr * scale, "weight_decay": 0.0},
            {"name": "adamw: x0 lambdas", "params": x0_lambdas, **X0_LAMBDAS},
            {"name": "adamw: residual lambdas", "params": resid_lambdas, **RESID_LAMBDAS}]


def adamw(groups: list[dict], betas: tuple[float, float]) -> tuple[torch.optim.AdamW, str]:
    """The fastest AdamW this device has: fused kernels where torch has them, else foreach."""
    try:
        return torch.optim.AdamW(groups, betas=betas, fused=True), "fused"
    except (RuntimeError, TypeError):  # fused kernels are missing for this device type
        return torch.optim.AdamW(groups, betas=betas), "foreach"


def muon_description(s: OptimizerSettings) -> str:
    """Muon's momentum and the variants that are on, for the group's line."""
    momentum = f"momentum {s.muon_momentum}" + (f" (from {s.muon_momentum_start} over {s.muon_momentum_warmup} steps)"
                                                 if s.muon_momentum_warmup else "")
    variants = [name for name, on in (("Polar Express", s.muon_ns == "polar_express"), ("NorMuon", s.muon_normuon),
                                      ("cautious weight decay", s.muon_cautious_wd)) if on]
    return ", ".join([momentum, "nesterov", *variants])


def make_optimizer(model: GPT, s: OptimizerSettings) -> tuple[torch.optim.Optimizer | OptimizerSet, list[str]]:
    """(optimizer, one line per group describing it). Groups without parameters are left out."""
    groups = [g for g in param_groups(model, s) if g["params"]]
    if s.name == "adamw":
        optimizer, kind = adamw(groups, s.betas)
        labels = [f"AdamW ({kind})"] * len(groups)
    else:
        muon = [g for g in groups if g["name"].startswith("muon")]
        optimizer, kind = adamw([g for g in groups if not g["name"].startswith("muon")], s.betas)
        # "original" scales each matrix's step by sqrt(max(1, rows / cols)) (Keller Jordan's Muon), so the
        # update's size per output dimension does not depend on the matrix's shape
        device = str(next(model.parameters()).device)
        ns_dtype, ns_reason = hardware.pick_newton_schulz_dtype(s.muon_ns_dtype, device)
        coefficients, safety = NS_SCHEDULES[s.muon_ns]
        muon_optimizer = Muon(muon, momentum=s.muon_momentum, ns_coefficients=coefficients, ns_safety=safety,
                              adjust_lr_fn="original", normuon=s.muon_normuon, cautious_wd=s.muon_cautious_wd,
                              ns_dtype=ns_dtype)
        optimizer = OptimizerSet({"muon": muon_optimizer, "adamw": optimizer})
        shards = f", orthogonalised in shares over {muon_optimizer.world_size} ranks" \
            if muon_optimizer.world_size > 1 else ""
        labels = [f"Muon ({muon_description(s)}, Newton-Schulz in {str(ns_dtype)[6:]}: {ns_reason}{shards})"
                  if g["name"].startswith("muon") else f"AdamW ({kind})" for g in groups]
    lines = [report.param_group_line(g["name"], sum(p.numel() for p in g["params"]), len(g["params"]),
                                     f"{label}, lr {g['lr']:.3g}, weight decay {g['weight_decay']:g}"
                                     + (f", betas {g['betas']}" if "betas" in g else ""))
             for g, label in zip(groups, labels)]
    return optimizer, lines
