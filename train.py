"""Train a GPT on token shards: one GPU, CPU, or many GPUs through torchrun.

    python train.py config/train_fineweb.py --batch_size=8 --compile=False
    torchrun --standalone --nproc_per_node=8 train.py config/train_fineweb.py
    python train.py config/train_fineweb.py --init_from=resume --max_iters=12000

Top to bottom: the config keys; one function per set-up stage (device, data, model, optimizer,
resume, compile/DDP, logging); the checkpoint and eval helpers; then train(), which runs the stages
in order and holds the loop. `python train.py --help` lists every key.
"""
from __future__ import annotations

import collections
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from typing import NoReturn

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from fineweb_gpt import autobatch
from fineweb_gpt import distributed
from fineweb_gpt import hardware
from fineweb_gpt import runlock
from fineweb_gpt import tokenizer
from fineweb_gpt.atomic import atomic_write, publish_copy, write_json
from fineweb_gpt.checkpoint import (BEST, LATEST, CheckpointError, build_model, check_resumable, load_checkpoint, rng_state,
                        save_checkpoint, set_rng_state)
from configurator import ConfigError, check_values, format_config, key, parse_config
from fineweb_gpt.dataloader import ShardError, TrainLoader, ValSet, check_token_ids, find_shards, read_meta
from fineweb_gpt.distributed import Env
from fineweb_gpt.hf_interop import GPT2_MODELS, from_pretrained
from model import MLPS, NORMS, POS_EMBS, GPT, GPTConfig
from fineweb_gpt.optimizer import OPTIMIZERS, OptimizerSettings, make_optimizer

REPO = os.path.dirname(os.path.abspath(__file__))


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = key("out", "run directory: checkpoints, config.json, metrics.jsonl")
    eval_interval: int = key(250, "evaluate (and checkpoint) every this many steps, plus at the start and end",
                             range="[1, inf)")
    log_interval: int = key(1, "print and record a log line every this many steps", range="[1, inf)")
    eval_iters: int = key(20, "val batches per eval; always the same first eval_iters*val_batch_size val windows",
                          range="[1, inf)")
    val_batch_size: int = key(0, "sequences per val batch (0 = batch_size); fix it with batch_size=auto so that "
                              "the val set does not depend on the GPU", range="[0, inf)")
    always_save_checkpoint: bool = key(True, "write ckpt.pt at every eval (else only at the end); ckpt_best.pt tracks the best val")
    init_from: str = key("scratch", "'scratch', 'resume' (from out_dir/ckpt.pt), 'auto' (resume if out_dir/ckpt.pt "
                         "exists, else scratch) or gpt2, gpt2-medium, gpt2-large, gpt2-xl",
                         choices=("scratch", "resume", "auto", *GPT2_MODELS))
    # wandb
    wandb_log: bool = key(False, "log to Weights & Biases (WANDB_MODE=offline works without a network)")
    wandb_project: str = key("fineweb-gpt", "wandb project")
    wandb_run_name: str = key("", "wandb run name ('' = the out_dir's name)")
    # data
    dataset: str = key("fineweb", "a folder under data/ holding shards (see data/fineweb/prepare.py)")
    data_dir: str = key("", "any folder of shards; overrides dataset")
    batch_size: int | str = key(12, "sequences per micro-batch on each GPU/process, or 'auto': the largest that fits "
                                "(probed on CUDA, fixed on CPU/MPS; needs total_batch_size)", range="[1, inf)",
                                choices=("auto",))
    block_size: int = key(1024, "context length in tokens", range="[1, inf)")
    gradient_accumulation_steps: int = key(0, "micro-batches per update summed over all ranks (0 = derive from "
                                           "total_batch_size)", range="[0, inf)")
    total_batch_size: int = key(0, "tokens per update; gradient_accumulation_steps is derived from it (0 = not set)",
                                range="[0, inf)")
    reprobe_batch_size: bool = key(False, "batch_size=auto on resume: probe again instead of reusing the micro-batch "
                                   "stored in the checkpoint")
    chunked_loss: bool = key(True, "compute the training loss in chunks, never holding the (B*T, vocab) logits "
                             "(same loss; not with logit_softcap, which needs them)")
    activation_checkpointing: bool = key(False, "recompute each block's activations during backward: far less "
                                         "memory for about one more forward pass of compute")
    # model (each key is the GPTConfig field of the same name)
    n_layer: int = key(12, "transformer blocks", range="[1, inf)")
    n_head: int = key(12, "attention heads", range="[1, inf)")
    n_embd: int = key(768, "embedding width", range="[1, inf)")
    dropout: float = key(0.0, "dropout probability (0 for pretraining; try 0.1+ when fine-tuning)", range="[0, 1)")
    bias: bool = key(True, "biases in Linear and LayerNorm layers, as GPT-2")
    vocab_size: int = key(50304, "embedding rows: GPT-2's 50257 padded to a multiple of 64", range="[1, inf)")
    pos_emb: str = key("learned", "positions: 'learned' (GPT-2) or 'rope' (rotary, on queries and keys)", choices=POS_EMBS)
    rope_theta: float = key(10000.0, "RoPE base (RoFormer's 10000)", range="(0, inf)")
    norm: str = key("layernorm", "'layernorm' (GPT-2) or 'rmsnorm'", choices=NORMS)
    qk_norm: bool = key(False, "RMSNorm each head's queries and keys before attention")
    mlp: str = key("gelu", "MLP activation: 'gelu' (GPT-2), 'relu2' (ReLU squared) or 'swiglu'", choices=MLPS)
    tie_embeddings: bool = key(True, "share the token embedding with the output head, as GPT-2")
    logit_softcap: float = key(0.0, "logits = c*tanh(logits/c) with this c (0 = off)", range="[0, inf)")
    zero_init_proj: bool = key(False, "start the projections into the residual stream (attn/mlp c_proj) at zero")
    # optimizer and schedule
    optimizer: str = key("adamw", "'adamw' (GPT-2's recipe) or 'muon' (Muon for the block matrices, AdamW for the "
                         "embeddings, head, norms and biases)", choices=OPTIMIZERS)
    learning_rate: float = key(6e-4, "peak learning rate: of every parameter (adamw), of the block matrices (muon)",
                               range="(0, inf)")
    embedding_lr: float = key(0.3, "muon: AdamW peak lr of the token (and position) embedding, at n_embd=768; "
                              "scaled by sqrt(768/n_embd)", range="[0, inf)")
    head_lr: float = key(0.004, "muon: AdamW peak lr of the output head (of the shared matrix when tied), at "
                         "n_embd=768; scaled by sqrt(768/n_embd)", range="[0, inf)")
    scalar_lr: float = key(0.02, "muon: AdamW peak lr of norm gains and biases, at n_embd=768; scaled by "
                           "sqrt(768/n_embd)", range="[0, inf)")
    muon_momentum: float = key(0.95, "muon: Nesterov momentum", range="[0, 1)")
    max_iters: int = key(5000, "optimizer updates in the whole run", range="[0, inf)")
    weight_decay: float = key(0.1, "decoupled weight decay of the matrices (adamw: and embeddings)", range="[0, inf)")
    beta1: float = key(0.9, "AdamW beta1", range="[0, 1)")
    beta2: float = key(0.95, "AdamW beta2", range="[0, 1)")
    grad_clip: float = key(1.0, "clip the global gradient norm to this (0 = no clipping)", range="[0, inf)")
    decay_lr: bool = key(True, "follow lr_schedule after warmup (else constant learning_rate)")
    lr_schedule: str = key("cosine", "after warmup, 'cosine' down to min_lr, or 'wsd': constant, then a linear cooldown "
                           "to min_lr over the last cooldown_frac of the schedule", choices=("cosine", "wsd"))
    cooldown_frac: float = key(0.2, "wsd: fraction of the schedule spent in the linear cooldown", range="(0, 1]")
    warmup_iters: int = key(200, "steps of linear warmup", range="[0, inf)")
    lr_decay_iters: int = key(0, "step where the schedule reaches min_lr (0 = max_iters)", range="[0, inf)")
    min_lr: float = key(6e-5, "final learning rate of the main group (the others scale alike), ~learning_rate/10",
                        range="[0, inf)")
    # system
    backend: str = key("auto", "DDP backend: 'nccl', 'gloo' or 'auto' (nccl on CUDA, gloo on CPU)",
                       choices=("auto", "nccl", "gloo"))
    device: str = key("auto", "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'")
    dtype: str = key("auto", "'auto' (bf16 where supported, fp16+GradScaler on older GPUs, fp32 on CPU), or force one",
                     choices=hardware.DTYPES)
    compile: bool | None = key(None, "torch.compile the model: None = auto (on for CUDA), True, False")
    seed: int = key(1337, "seed for initialisation, dropout and data order", range="[0, inf)")
    peak_tflops: float = key(0.0, "your device's dense bf16 peak for MFU (0 = look it up; unknown devices show n/a)",
                             range="[0, inf)")


class TrainingError(RuntimeError):
    """Stops the run with a message for the user (diverged loss, impossible config)."""


def check_config(cfg: TrainConfig) -> None:
    """Every problem with the training keys in one message: each key's declared choices and range, and
    what depends on two keys (the model keys are also checked together by GPTConfig)."""
    between = []
    if cfg.min_lr > cfg.learning_rate:
        between.append(f"min_lr={cfg.min_lr} exceeds learning_rate={cfg.learning_rate}: the schedule decays to min_lr")
    if cfg.batch_size == "auto" and (not cfg.total_batch_size or cfg.gradient_accumulation_steps):
        between.append("batch_size=auto needs total_batch_size (tokens per update, which the micro-batch must not "
                       "change) and derives gradient_accumulation_steps from it: set total_batch_size, leave "
                       "gradient_accumulation_steps at 0")
    check_values(cfg, between, "invalid training config:")


def model_config(cfg: TrainConfig) -> GPTConfig:
    """The GPTConfig that the model keys describe."""
    return GPTConfig(**{f.name: getattr(cfg, f.name) for f in fields(GPTConfig)})


def optimizer_settings(cfg: TrainConfig) -> OptimizerSettings:
    return OptimizerSettings(cfg.optimizer, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                             cfg.embedding_lr, cfg.head_lr, cfg.scalar_lr, cfg.muon_momentum)


def resolve_batch(cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """(micro-steps per rank, tokens per update), with each divisibility problem spelled out."""
    micro = cfg.batch_size * cfg.block_size  # tokens in one micro-batch of one rank
    accum = cfg.gradient_accumulation_steps
    if cfg.total_batch_size > 0:
        if cfg.total_batch_size % micro:
            k = cfg.total_batch_size // micro
            fixes = [f"total_batch_size={n * micro}" for n in (k, k + 1) if n > 0]
            seqs, rem = divmod(cfg.total_batch_size, cfg.block_size)
            if not rem:  # or keep the total and pick a micro-batch that divides it
                below = [b for b in range(cfg.batch_size - 1, 0, -1) if seqs % b == 0][:1]
                above = [b for b in range(cfg.batch_size + 1, seqs + 1) if seqs % b == 0][:1]
                fixes += [f"batch_size={b}" for b in below + above]
            raise ConfigError(f"total_batch_size={cfg.total_batch_size} is not a multiple of batch_size*block_size="
                              f"{cfg.batch_size}*{cfg.block_size}={micro}; use " + " or ".join(fixes))
        derived = cfg.total_batch_size // micro
        if accum and accum != derived:
            raise ConfigError(f"gradient_accumulation_steps={accum} disagrees with total_batch_size={cfg.total_batch_size}"
                              f" / (batch_size*block_size={micro}) = {derived}; set only one of them")
        accum = derived
    accum = accum or world_size
    if accum % world_size:
        raise ConfigError(f"{accum} micro-batches per update do not split over {world_size} processes; use a "
                          f"multiple of {world_size} (e.g. {max(1, round(accum / world_size)) * world_size}) "
                          f"via gradient_accumulation_steps or total_batch_size")
    return accum // world_size, accum * micro


def get_lr(step: int, cfg: TrainConfig) -> float:
    """The main group's learning rate at step: linear warmup, then down to min_lr at lr_decay_iters (default
    max_iters), then min_lr. cosine: a half cosine; wsd: learning_rate, then a straight line over the last
    cooldown_frac of the schedule (warmup-stable-decay, Hu et al. 2024; modded-nanogpt and nanochat)."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if cfg.lr_schedule == "wsd":
        cooldown = max(1, round(cfg.cooldown_frac * decay_iters))
        done = (step - (decay_iters - cooldown)) / cooldown  # <= 0 before the cooldown, 1 at its end
        return cfg.learning_rate - min(1.0, max(0.0, done)) * (cfg.learning_rate - cfg.min_lr)
    if step >= decay_iters:
        return cfg.min_lr
    ratio = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


SCHEDULE_KEYS = ("learning_rate", "min_lr", "max_iters", "decay_lr", "lr_schedule", "warmup_iters", "lr_decay_iters",
                 "cooldown_frac")


@dataclass
class LoopState:
    """What the loop changes and a checkpoint brings back (stored under the checkpoint's top-level keys)."""
    step: int = 0                       # optimizer updates done
    best_val_loss: float = math.inf
    elapsed: float = 0.0                # seconds of training so far, across resumes
    wandb_id: str | None = None         # so a resumed run continues the same wandb run
    loader: dict | None = None          # the train loader's state after the last batch trained on
    auto_batch_size: int | None = None  # the micro-batch batch_size=auto chose, so a resume does not probe again


# ------------------------------------------------------------------ set-up stages, in the order train() runs them

def resuming(cfg: TrainConfig) -> bool:
    """Whether this run continues out_dir/ckpt.pt: init_from=resume, or auto with a checkpoint there."""
    return cfg.init_from == "resume" or (cfg.init_from == "auto" and os.path.exists(os.path.join(cfg.out_dir, LATEST)))


def refuse_to_overwrite(cfg: TrainConfig) -> None:
    existing = [f for f in (LATEST, BEST) if os.path.exists(os.path.join(cfg.out_dir, f))]
    if cfg.init_from == "auto" and existing == [BEST]:
        raise ConfigError(f"{cfg.out_dir} holds {BEST} but no {LATEST} (a run with always_save_checkpoint=False "
                          f"that stopped early?); to continue from the best checkpoint, copy it to {LATEST}; or use "
                          f"another --out_dir")
    if not resuming(cfg) and existing:
        raise ConfigError(f"{cfg.out_dir} already holds a checkpoint ({', '.join(existing)}) that a new run would "
                          f"overwrite; continue it with --init_from=resume, or use another --out_dir (or delete "
                          f"{cfg.out_dir} to start over)")


def setup_device(cfg: TrainConfig, env: Env, device_reason: str) -> tuple[str, object]:
    """(dtype, autocast context), each choice printed."""
    dtype, dtype_reason = hardware.pick_dtype(cfg.dtype, env.device)
    if env.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores: free speed, tiny error
        torch.backends.cudnn.allow_tf32 = True
    env.print0(f"device: {env.device} ({hardware.device_name(env.device)}; {device_reason}), world size {env.world_size}")
    env.print0(f"dtype: {dtype} ({dtype_reason})")
    return dtype, hardware.autocast(env.device, dtype)


def data_dir_of(cfg: TrainConfig) -> str:
    return cfg.data_dir or os.path.join(REPO, "data", cfg.dataset)


def load_data(cfg: TrainConfig, env: Env) -> tuple[TrainLoader, ValSet, dict]:
    """(train loader, fixed val set, tokenizer record of the shards)."""
    data_dir = data_dir_of(cfg)
    meta = read_meta(data_dir)
    tok_record = tokenizer.describe(meta)
    train_loader = TrainLoader(data_dir, cfg.batch_size, cfg.block_size, cfg.seed, env.rank, env.world_size, env.device)
    val_set = ValSet(data_dir, cfg.val_batch_size or cfg.batch_size, cfg.block_size, cfg.eval_iters, env.device)
    env.print0(val_set.count_text_bytes(meta))  # the bytes behind bits per byte, or why it is n/a
    return train_loader, val_set, tok_record


def checkpoint_to_resume(cfg: TrainConfig, env: Env) -> dict | None:
    """out_dir/ckpt.pt when this run resumes, else None. Decided from what every process sees, so that all
    of them take the same branch; they must all see the same out_dir."""
    seen = env.gather(os.path.exists(os.path.join(cfg.out_dir, LATEST)))
    resume = cfg.init_from == "resume" or (cfg.init_from == "auto" and any(seen))
    if resume and any(seen) and not all(seen):
        raise ConfigError(f"{cfg.out_dir}/{LATEST} exists for ranks {[r for r, s in enumerate(seen) if s]} but not for "
                          f"the others: rank 0 writes checkpoints, so out_dir must be on storage that every node reads")
    return load_checkpoint(os.path.join(cfg.out_dir, LATEST)) if resume else None


def init_model(cfg: TrainConfig, ckpt: dict | None, env: Env) -> GPT:
    """The model on its device: from the checkpoint, OpenAI's GPT-2, or freshly initialised."""
    torch.manual_seed(cfg.seed)
    if ckpt is not None:
        changed = {k: (v, getattr(cfg, k)) for k, v in ckpt["model_args"].items()
                   if hasattr(cfg, k) and getattr(cfg, k) != v and k != "dropout"}
        if changed:
            env.print0(f"resume: model shape comes from the checkpoint; ignoring {changed} (checkpoint, config)")
        model = build_model(ckpt, os.path.join(cfg.out_dir, LATEST), dropout=cfg.dropout)
    elif cfg.init_from in GPT2_MODELS:
        model = from_pretrained(cfg.init_from, dropout=cfg.dropout)
        env.print0(f"init: OpenAI {cfg.init_from} weights; the model shape comes from them (n_layer/n_head/n_embd ignored)")
    else:
        model = GPT(model_config(cfg))
    if model.config.block_size < cfg.block_size:
        raise ConfigError(f"block_size={cfg.block_size} exceeds the model's {model.config.block_size}")
    model.to(env.device).train()
    counts, c = model.num_params(), model.config
    parts = [f"{counts['wte'] / 1e6:.2f}M token embedding" + (" (shared with the output head)" if c.tie_embeddings else ""),
             *([f"{counts['lm_head'] / 1e6:.2f}M output head"] if counts["lm_head"] else []),
             *([f"{counts['wpe'] / 1e6:.2f}M position embedding"] if counts["wpe"] else []),
             f"{counts['blocks'] / 1e6:.2f}M in the blocks"]
    env.print0(f"model: {counts['total'] / 1e6:.2f}M parameters = " + " + ".join(parts))
    env.print0(f"model: positions {c.pos_emb}, {c.norm}, qk_norm {c.qk_norm}, mlp {c.mlp}, tied head "
               f"{c.tie_embeddings}, logit softcap {c.logit_softcap or 'off'}, bias {c.bias}")
    return model


def set_memory_options(model: GPT, cfg: TrainConfig, env: Env) -> None:
    """The switches that trade compute for memory (the function computed stays the same), set on the raw
    model before compile and before batch_size=auto measures what fits."""
    model.chunked_loss, model.activation_checkpointing = cfg.chunked_loss, cfg.activation_checkpointing
    chunked = "off" if not cfg.chunked_loss else "off (logit_softcap needs the full logits)" \
        if model.config.logit_softcap else "on"
    env.print0(f"memory: chunked loss {chunked}, activation checkpointing {'on' if cfg.activation_checkpointing else 'off'}")


def check_data_fits(model: GPT, tok_record: dict, train_loader: TrainLoader, val_set: ValSet) -> None:
    """Every token id of the data must have an embedding: by meta.json's vocabulary, else by the shards' ids
    (all val tokens, a sample of the train shards)."""
    vocab = model.config.vocab_size
    if tok_record["vocab_size"] > vocab:
        raise ConfigError(f"the data's tokenizer ({tok_record['name']}) has {tok_record['vocab_size']} tokens but the "
                          f"model only {vocab} embeddings; raise vocab_size")
    check_token_ids(val_set.windows.shards, vocab, "val")
    check_token_ids(train_loader.windows.shards, vocab, "train", sample_tokens=1 << 18)


def setup_optimizer(model: GPT, cfg: TrainConfig, env: Env, dtype: str) -> tuple[torch.optim.Optimizer, list[float], object]:
    """(optimizer, each param group's peak learning rate, GradScaler: active only for float16)."""
    optimizer, lines = make_optimizer(model, optimizer_settings(cfg))
    env.print0(f"optimizer: {cfg.optimizer}, peak learning rates per group:\n  " + "\n  ".join(lines))
    peak_lrs = [group["lr"] for group in optimizer.param_groups]  # before a resume overwrites them
    return optimizer, peak_lrs, torch.amp.GradScaler(env.device.split(":")[0], enabled=(dtype == "float16"))


def setup_batch(cfg: TrainConfig, env: Env, model: GPT, optimizer, amp, ckpt: dict | None) -> tuple[TrainConfig, int, int]:
    """(cfg with batch_size=auto replaced by the micro-batch chosen, micro-steps per rank, tokens per update),
    printed."""
    if cfg.batch_size == "auto":
        cfg = replace(cfg, batch_size=auto_batch_size(cfg, env, model, optimizer, amp, ckpt))
    accum_steps, tokens_per_step = resolve_batch(cfg, env.world_size)
    env.print0(f"batch: {tokens_per_step:,} tokens/update = {cfg.batch_size} seqs x {cfg.block_size} tokens "
               f"x {accum_steps} micro-steps x {env.world_size} processes")
    return cfg, accum_steps, tokens_per_step


def auto_batch_size(cfg: TrainConfig, env: Env, model: GPT, optimizer, amp, ckpt: dict | None) -> int:
    """batch_size=auto: on resume the checkpoint's choice (unless reprobe_batch_size); else the largest
    micro-batch that fits (CUDA: probed with real training steps; CPU/MPS: a fixed size), the smallest
    over the processes. Always a divisor of the sequences each process trains per update."""
    group = cfg.block_size * env.world_size  # tokens of one sequence on every process
    sequences, rem = divmod(cfg.total_batch_size, group)
    if rem or not sequences:
        k = cfg.total_batch_size // group
        fixes = " or ".join(f"total_batch_size={n * group}" for n in (k, k + 1) if n > 0)
        raise ConfigError(f"batch_size=auto: total_batch_size={cfg.total_batch_size} is not a multiple of "
                          f"block_size*processes={cfg.block_size}*{env.world_size}={group}; use {fixes}")
    stored = ckpt.get("auto_batch_size") if ckpt is not None else None
    if stored and not cfg.reprobe_batch_size:  # largest divisor up to it: the process count may have changed
        size = autobatch.largest_at_most(autobatch.divisors(sequences), stored)
        env.print0(f"batch_size=auto: {size}, chosen when the run started and stored in the checkpoint "
                   f"(--reprobe_batch_size=True probes again)")
        return size
    size, how = autobatch.choose_batch_size(model, optimizer, amp, env.device, cfg.block_size, sequences)
    sizes = env.gather(size)
    env.print0(f"batch_size=auto: {how}" + (f"; the processes found {sizes}: all use the smallest, {min(sizes)}"
                                            if len(set(sizes)) > 1 else ""))
    return min(sizes)


def restore(ckpt: dict | None, cfg: TrainConfig, env: Env, optimizer, scaler, loader: TrainLoader) -> LoopState:
    """The state the loop starts from. On resume, everything a checkpoint brings back is restored here:
    loop state, optimizer, GradScaler, data position and every rank's RNG (so dropout masks continue)."""
    if ckpt is None:
        if env.rank:
            torch.manual_seed(cfg.seed + env.rank)  # different dropout masks per rank
        return LoopState(loader=loader.state_dict())
    check_resumable(ckpt, os.path.join(cfg.out_dir, LATEST))
    saved_optimizer = ckpt["config"].get("optimizer", "adamw")
    if saved_optimizer != cfg.optimizer:
        raise ConfigError(f"the checkpoint was trained with optimizer={saved_optimizer}, this run asks for "
                          f"optimizer={cfg.optimizer}: its optimizer state cannot carry over; resume with "
                          f"--optimizer={saved_optimizer}, or start a new run in another --out_dir")
    state = LoopState(step=ckpt["step"], best_val_loss=ckpt["best_val_loss"], elapsed=ckpt["elapsed"],
                      wandb_id=ckpt["wandb_run_id"], loader=ckpt["loader"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    loader.load_state_dict(ckpt["loader"])
    old = TrainConfig(**ckpt["config"])
    if get_lr(state.step, old) != get_lr(state.step, cfg):
        changed = [f"{k} {getattr(old, k)} -> {getattr(cfg, k)}" for k in SCHEDULE_KEYS if getattr(old, k) != getattr(cfg, k)]
        env.print0(f"resume: the schedule changed ({', '.join(changed)}): lr at step {state.step} goes from "
                   f"{get_lr(state.step, old):.3g} to {get_lr(state.step, cfg):.3g}")
    env.print0(f"resume: from step {state.step} of {cfg.out_dir}/{LATEST}, best val loss {state.best_val_loss:.4f}")
    if state.step > cfg.max_iters:
        raise ConfigError(f"the checkpoint is at step {state.step}, past max_iters={cfg.max_iters}; "
                          f"raise max_iters to continue")
    rngs = ckpt["rng"]
    if len(rngs) == env.world_size:
        set_rng_state(rngs[env.rank])
    else:  # a resume on another number of processes: same batches, new dropout masks
        set_rng_state(rngs[0])
        env.print0(f"resume: {len(rngs)} process(es) saved RNG states, {env.world_size} now: dropout masks will differ")
        if env.rank:
            torch.manual_seed(cfg.seed + env.rank + state.step)
    return state


def compile_and_wrap(raw_model: GPT, cfg: TrainConfig, env: Env) -> torch.nn.Module:
    """The model the loop trains: compiled and/or DDP-wrapped; raw_model stays unwrapped (saved, evaluated)."""
    use_compile, compile_reason = hardware.pick_compile(cfg.compile, env.device)
    env.print0(f"compile: {compile_reason}")
    model = torch.compile(raw_model) if use_compile else raw_model
    if env.ddp:
        model = DDP(model, device_ids=[env.local_rank] if env.device.startswith("cuda") else None)
    return model


class NullLogger:
    """wandb's interface, doing nothing, so the loop never asks whether wandb is on."""
    id = None
    def log(self, *args, **kwargs): pass
    def finish(self): pass


class RunLog:
    """The run directory's config.json and metrics.jsonl, and wandb: written by rank 0 only."""

    def __init__(self, cfg: TrainConfig, env: Env, resume_step: int | None, wandb_id: str | None, record: dict):
        self.metrics, self.wandb = None, NullLogger()
        if not env.master:
            return
        os.makedirs(cfg.out_dir, exist_ok=True)
        write_json(os.path.join(cfg.out_dir, "config.json"), record)
        print("config:\n" + format_config(cfg), flush=True)
        self.metrics = open_metrics(os.path.join(cfg.out_dir, "metrics.jsonl"), resume_step)
        if cfg.wandb_log:
            import wandb
            self.wandb = wandb.init(project=cfg.wandb_project, id=wandb_id, resume="allow", config=asdict(cfg),
                                    name=cfg.wandb_run_name or os.path.basename(cfg.out_dir.rstrip("/")), dir=cfg.out_dir)

    def record(self, row: dict) -> None:
        if self.metrics:
            self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()
        self.wandb.log(row, step=row["step"])

    def close(self) -> None:
        if self.metrics:
            self.metrics.close()
        self.wandb.finish()


def open_metrics(path: str, resume_step: int | None):
    """metrics.jsonl, open for appending. On resume, rows of the steps about to be redone are dropped
    (a run killed after its last checkpoint logged steps the resumed run replays)."""
    if resume_step is None or not os.path.exists(path):
        return open(path, "w" if resume_step is None else "a")
    kept = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["step"] < resume_step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):  # a line cut short by a crash
                pass
    with atomic_write(path, "w") as f:
        f.writelines(kept)
    return open(path, "a")


class StopFlag:
    """Set by SIGINT, SIGTERM or SIGUSR1; the loop finishes its step, saves and exits."""
    # One stop request can arrive more than once: a Ctrl-C reaches every process in the terminal's
    # process group and a launcher may forward it again (torchrun does, then waits 30 s before SIGKILL;
    # SLURM signals every task). Repeats this soon are the same request, not a second Ctrl-C.
    # SIGUSR1 is what scripts/slurm_train.sh asks SLURM to send shortly before the time limit.
    DUPLICATE_WINDOW_S = 3.0
    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))

    def __init__(self):
        self.signal, self.first_at = None, 0.0
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signal is not None:
            if time.monotonic() - self.first_at < self.DUPLICATE_WINDOW_S:
                return
            raise KeyboardInterrupt  # a second Ctrl-C, later, means now
        self.signal, self.first_at = signal.Signals(signum).name, time.monotonic()
        print(f"\n{self.signal} received: finishing this step, then saving and exiting (again to abort)", flush=True)


# ------------------------------------------------------------------ helpers the loop calls

@torch.no_grad()
def evaluate(model: GPT, val_set: ValSet, amp, env: Env) -> float:
    """Mean loss over the fixed val windows, split across ranks."""
    model.eval()
    total = torch.zeros(2, device=env.device)  # (sum of batch losses, batches)
    for x, y in val_set.batches(env.rank, env.world_size):
        with amp:
            _, loss = model(x, y)
        total += torch.stack([loss.float(), torch.ones((), device=env.device)])
    env.all_sum(total)
    model.train()
    return (total[0] / total[1]).item()


def save_run(out_dir: str, names: tuple[str, ...], model: GPT, optimizer, scaler, cfg: TrainConfig,
             state: LoopState, val_loss: float | None, tok_record: dict, env: Env) -> None:
    """Checkpoint the run under each of `names` (same bytes). Called on every rank: each contributes its
    RNG state; rank 0 writes."""
    rngs = env.gather(rng_state())
    if not env.master:
        return
    first = os.path.join(out_dir, names[0])
    save_checkpoint({"model": model.state_dict(), "model_args": asdict(model.config), "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict(), "step": state.step, "best_val_loss": state.best_val_loss,
                     "val_loss": val_loss, "config": asdict(cfg), "rng": rngs, "loader": state.loader,
                     "tokenizer": tok_record, "wandb_run_id": state.wandb_id, "elapsed": state.elapsed,
                     "auto_batch_size": state.auto_batch_size}, first)
    for name in names[1:]:
        publish_copy(first, os.path.join(out_dir, name))
    print(f"saved {' and '.join(names)} in {out_dir} at step {state.step}", flush=True)


def duration(seconds: float) -> str:
    """1h02m03s, 4m05s or 6s: elapsed and ETA in the log."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def short_count(n: float) -> str:
    """3.15B, 524.29K: token counts in the log."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def eta(recent_step_times: list[float], steps_left: int) -> str:
    """Time to max_iters at the median of the recent update times (evals and checkpoint saves are not
    in them; the median ignores a one-off slow step such as the first, compiled one)."""
    times = sorted(recent_step_times)
    return duration(times[len(times) // 2] * steps_left)


def diverged(step_loss: float, grad_norm: float, step: int, cfg: TrainConfig) -> TrainingError:
    return TrainingError(
        f"loss is {step_loss} (grad norm {grad_norm}) at step {step}: training diverged. Nothing was "
        f"saved after the last good checkpoint in {cfg.out_dir}. Lower learning_rate, keep grad_clip=1.0, or "
        f"use dtype=bfloat16, then rerun (or --init_from=resume from the last checkpoint)")


# ------------------------------------------------------------------ the run

def train(cfg: TrainConfig) -> dict:
    """Run training; returns a summary (final step, losses). Raises on user errors."""
    check_config(cfg)
    device, device_reason = hardware.pick_device(cfg.device)
    with distributed.setup(device, cfg.backend) as env, runlock.job_lock(cfg.out_dir, env, f"--out_dir={cfg.out_dir}",
                                                                          ConfigError):  # one run per out_dir
        refuse_to_overwrite(cfg)
        dtype, amp = setup_device(cfg, env, device_reason)
        for split in ("train", "val"):  # missing data is reported now, not after minutes of batch_size=auto probing
            find_shards(data_dir_of(cfg), split)
        ckpt = checkpoint_to_resume(cfg, env)
        raw_model = init_model(cfg, ckpt, env)  # saved and evaluated unwrapped: canonical keys
        set_memory_options(raw_model, cfg, env)
        optimizer, peak_lrs, scaler = setup_optimizer(raw_model, cfg, env, dtype)
        # batch_size=auto is probed with the model and optimizer; the data, batched by it, comes after them
        auto_batch = cfg.batch_size == "auto"
        cfg, accum_steps, tokens_per_step = setup_batch(cfg, env, raw_model, optimizer, amp, ckpt)
        train_loader, val_set, tok_record = load_data(cfg, env)
        check_data_fits(raw_model, tok_record, train_loader, val_set)
        state = restore(ckpt, cfg, env, optimizer, scaler, train_loader)
        state.auto_batch_size = cfg.batch_size if auto_batch else None
        log = RunLog(cfg, env, state.step if ckpt else None, state.wandb_id,
                     {"config": asdict(cfg), "model": asdict(raw_model.config), "tokens_per_step": tokens_per_step,
                      "world_size": env.world_size, "dtype": dtype, "device": hardware.device_name(env.device),
                      "tokenizer": tok_record})  # plot.py shows reference curves only for runs on their tokenizer
        state.wandb_id = log.wandb.id or state.wandb_id
        flops_per_step = raw_model.flops_per_token(cfg.block_size) * tokens_per_step
        stop, start_step, elapsed_before, t0 = StopFlag(), state.step, state.elapsed, time.time()
        last_loss = val_loss = None
        step_times: collections.deque[float] = collections.deque(maxlen=20)  # recent update times, for the ETA
        model = compile_and_wrap(raw_model, cfg, env)
        try:
            x, y, batch_state = train_loader.next_batch()
            for step in range(start_step, cfg.max_iters + 1):
                state.step, state.elapsed = step, elapsed_before + time.time() - t0
                last_step = step == cfg.max_iters
                row = {"step": step, "tokens": step * tokens_per_step}
                # evaluate at the start, every eval_interval and after the last update (a resumed run re-evaluates
                # its first step: the same number as before the stop, a check that the model came back intact)
                resumed_val = ckpt["val_loss"] if ckpt is not None and step == start_step else None
                if step % cfg.eval_interval == 0 or last_step or resumed_val is not None:
                    row["val_loss"] = val_loss = evaluate(raw_model, val_set, amp, env)
                    val_bpb = val_set.bits_per_byte(val_loss)
                    if val_bpb is not None:
                        row["val_bpb"] = val_bpb
                    env.print0(f"step {step}: val loss {val_loss:.4f}" +
                               (f" (before the stop: {resumed_val:.4f})" if resumed_val is not None else "") +
                               f" | val bpb {f'{val_bpb:.4f}' if val_bpb is not None else 'n/a'} | "
                               f"elapsed {duration(elapsed_before + time.time() - t0)}")
                    names = ((LATEST,) if cfg.always_save_checkpoint or last_step else ()) + \
                            ((BEST,) if val_loss < state.best_val_loss else ())
                    state.best_val_loss = min(state.best_val_loss, val_loss)
                    if step > start_step and names:
                        save_run(cfg.out_dir, names, raw_model, optimizer, scaler, cfg, state, val_loss, tok_record, env)
                if last_step:
                    log.record({**row, "elapsed": elapsed_before + time.time() - t0})
                    break

                # ---- one optimizer update: accum_steps micro-batches, then clip, step
                t_step = time.time()
                lr = get_lr(step, cfg)
                for group, peak in zip(optimizer.param_groups, peak_lrs):
                    group["lr"] = peak * lr / cfg.learning_rate  # every group follows the main group's schedule
                loss_sum = torch.zeros((), device=env.device)
                for micro in range(accum_steps):
                    sync = not env.ddp or micro == accum_steps - 1  # all-reduce gradients on the last micro-step only
                    with (nullcontext() if sync else model.no_sync()), amp:
                        _, loss = model(x, y)
                    state.loader = batch_state  # this batch is consumed
                    x, y, batch_state = train_loader.next_batch()  # prefetch the next batch while the GPU works
                    scaler.scale(loss / accum_steps).backward()
                    loss_sum += loss.detach()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip or float("inf")).item()
                last_loss = env.all_mean(loss_sum / accum_steps).item()
                if not math.isfinite(last_loss) or (not math.isfinite(grad_norm) and not scaler.is_enabled()):
                    raise diverged(last_loss, grad_norm, step, cfg)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                hardware.synchronize(env.device)
                dt = time.time() - t_step
                step_times.append(dt)

                if step % cfg.log_interval == 0:
                    mfu = hardware.mfu(flops_per_step / dt, env.device, cfg.peak_tflops, env.world_size)
                    mem, mem_kind = hardware.peak_memory(env.device)
                    row.update(loss=last_loss, lr=lr, grad_norm=grad_norm, tok_per_s=tokens_per_step / dt, mfu=mfu,
                               elapsed=elapsed_before + time.time() - t0, peak_mem_gib=mem)
                    env.print0(f"step {step}: loss {last_loss:.4f} | lr {lr:.3e} | grad norm {grad_norm:.3f} | "
                               f"{tokens_per_step / dt:,.0f} tok/s | MFU {f'{mfu:.1%}' if mfu is not None else 'n/a'} | "
                               f"{mem_kind} {f'{mem:.2f} GiB' if mem is not None else 'n/a'} | {dt * 1000:.0f} ms | "
                               f"{short_count((step + 1) * tokens_per_step)} tokens | "
                               f"ETA {eta(list(step_times), cfg.max_iters - step - 1)}")
                if len(row) > 2:
                    log.record(row)
                if env.any(stop.signal is not None):  # every rank stops at the same step
                    state.step, state.elapsed = step + 1, elapsed_before + time.time() - t0
                    save_run(cfg.out_dir, (LATEST,), raw_model, optimizer, scaler, cfg, state, None, tok_record, env)
                    env.print0(f"stopped after step {step + 1}; continue with --init_from=resume (or auto)")
                    break
        finally:
            stop.restore()
            log.close()
            del model  # a DDP wrapper holds the process group: release it before the group is destroyed
    return {"step": step, "loss": last_loss, "val_loss": val_loss, "best_val_loss": state.best_val_loss}


def fail(message: str) -> NoReturn:
    """Exit with the message; under torchrun one process per machine prints it, the others exit quietly.
    (The user errors caught in main() are raised by every process alike; one raised only on a process
    other than its machine's first would go unprinted, and torchrun's summary names that process.)"""
    sys.exit(message if distributed.prints_errors() else 1)


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = parse_config(TrainConfig, sys.argv[1:] if argv is None else argv, "train.py")
    except ConfigError as e:
        fail(f"train.py: config error: {e}")
    try:
        train(cfg)
    except (ConfigError, ShardError, CheckpointError, TrainingError, ValueError) as e:
        fail(f"train.py: error: {e}")
    except torch._dynamo.exc.BackendCompilerFailed as e:  # no C compiler, a triton that does not fit the GPU, ...
        fail(f"train.py: error: torch.compile could not build the model on this machine "
             f"({str(e).strip().splitlines()[0][:300]}); run again with --compile=False")
    except OSError as e:  # a full disk or an unwritable out_dir while saving, ...
        fail(f"train.py: error: {e}\nA checkpoint already in out_dir is intact (every save is atomic): fix that, "
             f"then continue with --init_from=resume")


if __name__ == "__main__":
    main()
