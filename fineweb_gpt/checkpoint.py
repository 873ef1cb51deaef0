"""Checkpoints on disk: written atomically, loaded with errors that say what to do.

A checkpoint is a dict saved by torch.save: model (canonical keys: no `_orig_mod.` or `module.`),
model_args, and for a training run optimizer, scaler, config, rng (one state per process), tokenizer and
loop (LoopState, one record: step, best val loss, data position, ...); see training_checkpoint.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from fineweb_gpt.atomic import atomic_write, find_os_error, os_error_reason
from fineweb_gpt.errors import UserError, raised_as
from model import GPT, GPTConfig

LATEST, BEST = "ckpt.pt", "ckpt_best.pt"


@dataclass
class LoopState:
    """What the training loop changes and a resume brings back, saved as one record (ckpt["loop"]).
    A field added here is saved and restored with the rest; checkpoints saved before it read its default."""
    step: int = 0                       # optimizer updates done
    best_val_loss: float = math.inf
    val_loss: float | None = None       # measured at `step`, if an eval ran there (a resume evaluates again)
    elapsed: float = 0.0                # seconds of training so far, across resumes
    wandb_run_id: str | None = None     # so a resumed run continues the same wandb run
    loader: dict | None = None          # the train loader's state after the last batch trained on
    auto_batch_size: int | None = None  # the micro-batch batch_size=auto chose, so a resume does not probe again
    budget: dict | None = None          # a time budget's schedule (plan.BudgetState), so the cooldown continues
    tokens: int | None = None           # tokens trained on (None: saved before this count, when every update was full)
    attn_window: int | None = None      # the short attention window of the step (a window schedule's current value),
                                        # which sample/eval/export run with; None: no window, or saved before this


# What a resume reads besides the model; each is written by training_checkpoint.
RESUME_KEYS = ("loop", "optimizer", "scaler", "rng", "config", "tokenizer")


def training_checkpoint(model: GPT, optimizer, scaler, config: dict, rngs: list[dict], tokenizer: dict,
                        loop: LoopState) -> dict:
    """Everything a run resumes from; model and model_args alone are what sample.py and export.py read."""
    return {"model": model.state_dict(), "model_args": asdict(model.config), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "config": config, "rng": rngs, "tokenizer": tokenizer, "loop": asdict(loop)}


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt or does not fit; the message says what to do."""


def save_checkpoint(state: dict, path: str) -> None:
    """torch.save to a temporary name beside path, fsync, rename over path: a crash leaves the old file or
    the new one.
    A failed write (a full disk, a quota) is a CheckpointError that says so."""
    try:
        with atomic_write(path) as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError, not an OSError
        if not isinstance(e, OSError) and find_os_error(e) is None and "PytorchStreamWriter" not in str(e):
            raise  # not a write that failed: a bug, with its traceback
        raise CheckpointError(
            f"could not write the checkpoint {path} ({os_error_reason(e)}). {os.path.basename(path)} as it was "
            f"before this save is intact (saves are atomic); once that is fixed, continue with "
            f"--init_from=resume") from None


def canonical_state_dict(state_dict: dict) -> dict:
    """Strip the prefixes that torch.compile (`_orig_mod.`) and DDP (`module.`) add to keys."""
    out = {}
    for k, v in state_dict.items():
        while k.startswith(("_orig_mod.", "module.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def resolve(path_or_dir: str, which: str = "latest") -> str:
    """The checkpoint file: out_dir/ckpt.pt for 'latest', out_dir/ckpt_best.pt for 'best', else `which` itself."""
    if which in ("latest", "best"):
        return os.path.join(path_or_dir, LATEST if which == "latest" else BEST)
    return which


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint on CPU (whatever device it was saved from), validating what it holds."""
    if not os.path.exists(path):
        folder = os.path.dirname(path) or "."
        found = sorted(f for f in os.listdir(folder) if f.endswith(".pt")) if os.path.isdir(folder) else []
        if not os.path.isdir(folder):
            hint = f"{folder} does not exist"
        else:
            hint = f"{folder} holds {found}" if found else f"{folder} holds no checkpoints; train first"
        raise CheckpointError(f"no checkpoint at {path} ({hint}); check --out_dir")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle errors, foreign formats
        if isinstance(e, OSError) and e.errno is not None:  # the system refused (a folder, no permission, I/O)
            raise CheckpointError(f"cannot read {path} ({os_error_reason(e)})") from None
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}); it is "
            f"truncated, corrupt or not a fineweb-gpt checkpoint. Use {BEST} or an older copy, or retrain") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise CheckpointError(f"{path} holds bare model weights ({len(ckpt)} tensors such as {keys[:2]}) without "
                                  f"the model's shape (model_args); fineweb-gpt checkpoints are written by train.py")
        raise CheckpointError(f"{path} is not a fineweb-gpt checkpoint (it holds {keys}, not model + model_args)")
    # nanoGPT's checkpoints hold model + model_args under our names; older ones also keep each layer's
    # causal mask as a buffer (attn.bias, 4-D), which our attention does not need
    ckpt["model"] = {k: v for k, v in canonical_state_dict(ckpt["model"]).items()
                     if not (k.endswith(".attn.bias") and v.dim() == 4)}
    gather_flat_loop_state(ckpt)
    return ckpt


def gather_flat_loop_state(ckpt: dict) -> None:
    """Conversion of the layout before the loop state was one record: its fields sat at the top level under
    their own names (step, best_val_loss, val_loss, elapsed, wandb_run_id, loader, auto_batch_size), so
    those runs still resume. (nanoGPT's checkpoints count iter_num, not step: they are left alone.)"""
    if "loop" not in ckpt and "step" in ckpt and "loader" in ckpt:
        ckpt["loop"] = {f.name: ckpt.pop(f.name) for f in fields(LoopState) if f.name in ckpt}


def loop_state(ckpt: dict | None, path: str) -> LoopState:
    """The loop state a checkpoint saved, once it is known to hold all a resume needs (a new LoopState for a
    new run: ckpt None)."""
    if ckpt is None:
        return LoopState()
    check_resumable(ckpt, path)
    unknown = sorted(set(ckpt["loop"]) - {f.name for f in fields(LoopState)})
    if unknown:
        raise CheckpointError(f"{path} was written by a newer version of fineweb-gpt (its loop state holds "
                              f"{unknown}); update fineweb-gpt to resume it")
    return LoopState(**ckpt["loop"])


def check_resumable(ckpt: dict, path: str) -> None:
    """A checkpoint another trainer wrote can be sampled from but not continued: say what it is."""
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if not missing and isinstance(ckpt["rng"], list):
        return
    if not missing:  # one RNG state, not one per process: this project's layout before per-rank states
        raise CheckpointError(f"{path} was written by an older version of fineweb-gpt (one RNG state, not one per "
                              f"process) and cannot be resumed by this one; sample.py and export.py still read it")
    what = (f"a nanoGPT checkpoint (iter_num {ckpt['iter_num']})" if "iter_num" in ckpt else
            f"not a checkpoint train.py can continue (it lacks {missing})")
    raise CheckpointError(f"{path} is {what}: its model weights load for sample.py and export.py, but a resume "
                          f"needs the optimizer, data position and RNG state that train.py saves. Start a new "
                          f"run in another --out_dir")


def rng_state() -> dict:
    """Every RNG a training step may draw from, in a form torch.load(weights_only=True) accepts."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss], "numpy": [kind, torch.from_numpy(keys.astype(np.int64)),
                                                              pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_model(ckpt: dict, path: str, **overrides) -> GPT:
    """The GPT stored in a loaded checkpoint; overrides (e.g. dropout) replace saved model args."""
    def misfit(e: Exception) -> CheckpointError:
        return CheckpointError(f"{path} does not fit this version's GPT ({str(e).splitlines()[0][:300]})")

    with raised_as(misfit, TypeError, ValueError):  # an unknown or invalid model argument
        config = GPTConfig(**{**ckpt["model_args"], **overrides})
    model = GPT(config)
    with raised_as(misfit, RuntimeError):  # missing, unexpected or differently shaped weights
        model.load_state_dict(ckpt["model"])
    return model


def load_model(path: str) -> tuple[GPT, dict]:
    """(GPT in eval mode on CPU, checkpoint dict) from a checkpoint file, with clear errors. A checkpoint saved
    during a window warmup gets the short window of its step as attn_window: the model computes what its logged
    val loss measured (the window is a buffer derived from the step, not a weight)."""
    ckpt = load_checkpoint(path)
    window = ckpt.get("loop", {}).get("attn_window")
    if not ckpt["model_args"].get("attn_window"):  # an unwindowed model (some older runs saved a window anyway)
        window = None
    return build_model(ckpt, path, **({"attn_window": window} if window else {})).eval(), ckpt
