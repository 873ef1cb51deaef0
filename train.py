"""Train a GPT on token shards: one GPU, CPU, or many GPUs through torchrun.

    python train.py config/train_fineweb.py --batch_size=8 --compile=False
    torchrun --standalone --nproc_per_node=8 train.py config/train_fineweb.py
    python train.py config/train_fineweb.py --init_from=resume --max_iters=12000

Top to bottom: the config keys; one function per set-up stage (device, data, model, optimizer,
batch, resume, compile/DDP); the eval and checkpoint helpers; then train(), which runs the stages in
order and holds the loop and its update step. What the loop uses lives with its concern in
fineweb_gpt/: the lr schedule (schedule.py), when the run ends and the depth dial (plan.py), the batch
arithmetic (batch.py), the checkpoint layout and loop state (checkpoint.py), the run log and metrics.jsonl
(runlog.py), the stop signal (stop_signal.py).
`python train.py --help` lists every key.
"""
from __future__ import annotations

import collections
import functools
import gc
import itertools
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable, NoReturn

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import ConfigError, check_values, key, keys_of, parse_config
from fineweb_gpt import distributed, hardware, plan, schedule, tokenizer
from fineweb_gpt.activation_checkpointing import apply_activation_checkpointing
from fineweb_gpt.atomic import publish_copy
from fineweb_gpt.autobatch import NothingFits, is_out_of_memory
from fineweb_gpt.batch import BatchSchedule, auto_batch_size, resolve_batch
from fineweb_gpt.checkpoint import (BEST, LATEST, LoopState, build_model, load_checkpoint, loop_state,
                                    rng_state, save_checkpoint, set_rng_state, training_checkpoint)
from fineweb_gpt import report
from fineweb_gpt import runlock
from fineweb_gpt.dataloader import TrainLoader, ValSet, check_token_ids, find_shards, read_meta
from fineweb_gpt.distributed import Env
from fineweb_gpt.errors import UserError, raised_as
from fineweb_gpt.hf_interop import GPT2_MODELS, from_pretrained
from fineweb_gpt.optimizer import OPTIMIZERS, OptimizerSettings, make_optimizer
from fineweb_gpt.runlog import Clock, RunLog, duration, out_dir_failed, short_count
from fineweb_gpt.stop_signal import StopFlag
from model import GPT, GPTConfig, count_params, flex_attention_error, masked, short_window_layers

REPO = os.path.dirname(os.path.abspath(__file__))
ModelKeys = keys_of(GPTConfig)  # n_layer, n_embd, ...: GPTConfig's fields, each declared once in model.py


@dataclass
class TrainConfig(ModelKeys):
    """train.py's keys: the model keys (first in --help), then these."""
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
    gradient_accumulation_steps: int = key(0, "micro-batches per update summed over all ranks (0 = derive from "
                                           "total_batch_size)", range="[0, inf)")
    total_batch_size: int = key(0, "tokens per update; gradient_accumulation_steps is derived from it (0 = not set)",
                                range="[0, inf)")
    batch_warmup_iters: int = key(0, "steps over which the tokens per update grow from batch_start_frac of "
                                  "total_batch_size to all of it, through the accumulation count in whole micro-steps "
                                  "(0 = the full batch from the start)", range="[0, inf)")
    batch_start_frac: float = key(0.25, "batch_warmup_iters: fraction of the micro-steps per update at step 0",
                                  range="(0, 1]")
    reprobe_batch_size: bool = key(False, "batch_size=auto on resume: probe again instead of reusing the micro-batch "
                                   "stored in the checkpoint")
    doc_align: str = key("off", "training rows: 'off' (windows at random offsets), 'bestfit' (whole documents packed "
                         "best-fit, every row starts at a document) or 'crop' (every row starts at a document, cut at "
                         "the row's end)", choices=("off", "bestfit", "crop"))
    chunked_loss: bool = key(True, "compute the training loss in chunks, never holding the (B*T, vocab) logits "
                             "(same loss, logit_softcap included)")
    activation_checkpointing: bool = key(False, "recompute each block's activations during backward: far less "
                                         "memory for about one more forward pass of compute")
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
    muon_ns_dtype: str = key("auto", "muon: dtype of the Newton-Schulz iteration: 'auto' (bfloat16 where the device "
                             "computes it natively, else float32), 'bfloat16' or 'float32'", choices=hardware.MUON_NS_DTYPES)
    muon_momentum_start: float = key(0.85, "muon: momentum at step 0 when muon_momentum_warmup is on", range="[0, 1)")
    muon_momentum_warmup: int = key(0, "muon: steps over which the momentum rises from muon_momentum_start to "
                                    "muon_momentum (0 = constant muon_momentum)", range="[0, inf)")
    muon_ns: str = key("jordan", "muon: Newton-Schulz coefficients: 'jordan' (Keller Jordan's quintic, 5 steps) or "
                       "'polar_express' (Amsel et al. 2025)", choices=("jordan", "polar_express"))
    muon_normuon: bool = key(False, "muon: NorMuon's per-neuron normalisation of the orthogonalised update")
    muon_cautious_wd: bool = key(False, "muon: cautious weight decay: decay only the weights whose update points "
                                 "the same way")
    max_iters: int = key(5000, "optimizer updates in the whole run", range="[0, inf)")
    time_budget: str = key("", "train for this much wall-clock time instead of max_iters: 8h, 90m, 2h30m; set-up, "
                           "evals and checkpoints included, the wsd cooldown timed to end inside it ('' = off)")
    depth: int | str = key(0, "one dial for the model's size (0 = off): n_layer=depth, n_embd=64*depth, "
                           "n_head=depth; then max_iters for tokens_per_param tokens per parameter and "
                           "total_batch_size by the Power Lines rule, learning rates scaled by sqrt(batch/2^19); keys "
                           "set explicitly win. 'auto' (with time_budget): measure a few depths on this machine and "
                           "take the deepest whose compute-optimal tokens fit", range="[0, inf)", choices=("auto",))
    tokens_per_param: float = key(plan.TOKENS_PER_PARAM, "depth: training tokens per parameter (Chinchilla's "
                                  "compute-optimal ratio, Hoffmann et al. 2022)", range="(0, inf)")
    plan_only: bool = key(False, "print the run's plan (shape, parameters, tokens, steps; depth=auto's table) "
                          "and exit without training")
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
    window_warmup_iters: int = key(0, "steps over which the short attention window grows linearly from window_start "
                                   "to attn_window (0 = attn_window from the start)", range="[0, inf)")
    window_start: int = key(0, "the short attention window at step 0 when window_warmup_iters is on", range="[0, inf)")
    seq_warmup_iters: int = key(0, "a sequence-length warmup: each row of block_size tokens is trained as rows of "
                                "seq_start tokens at step 0, doubling at equal intervals up to block_size at this "
                                "step; the tokens per update stay the same (0 = off)", range="[0, inf)")
    seq_start: int = key(0, "the row length at step 0 when seq_warmup_iters is on; block_size/seq_start must be a "
                         f"power of two, at most {schedule.MAX_SEQ_RATIO}", range="[0, inf)")
    min_lr: float = key(6e-5, "final learning rate of the main group (the others scale alike), ~learning_rate/10",
                        range="[0, inf)")
    # system
    backend: str = key("auto", "DDP backend: 'nccl', 'gloo' or 'auto' (nccl on CUDA, gloo on CPU)",
                       choices=("auto", "nccl", "gloo"))
    device: str = key("auto", "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'")
    dtype: str = key("auto", "'auto' (bf16 on GPUs that compute it natively, compute capability 8.0+; fp16+GradScaler "
                     "on older GPUs; fp32 on CPU), or force one",
                     choices=hardware.DTYPES)
    compile: bool | None = key(None, "torch.compile the model: None = auto (on for CUDA), True, False")
    seed: int = key(1337, "seed for initialisation, dropout and data order", range="[0, inf)")
    peak_tflops: float = key(0.0, "your device's dense bf16 peak for MFU (0 = look it up; unknown devices show n/a)",
                             range="[0, inf)")


MUON_VARIANT_KEYS = ("muon_ns", "muon_normuon", "muon_cautious_wd")  # saved in Muon's state dict


class TrainingError(UserError):
    """Stops the run with a message for the user (diverged loss, impossible config, unwritable out_dir)."""


def check_config(cfg: TrainConfig) -> None:
    """Every problem with the training keys in one message: each key's declared choices and range, and
    what depends on two keys (the model keys are also checked together by GPTConfig)."""
    between = []
    if cfg.min_lr > cfg.learning_rate:
        between.append(f"min_lr={cfg.min_lr} exceeds learning_rate={cfg.learning_rate}: the schedule decays to min_lr")
    if cfg.batch_size == "auto" and ((cfg.depth == 0 and not cfg.total_batch_size) or cfg.gradient_accumulation_steps):
        between.append("batch_size=auto needs total_batch_size (tokens per update, which the micro-batch must not "
                       "change) and derives gradient_accumulation_steps from it: set total_batch_size, leave "
                       "gradient_accumulation_steps at 0")
    if cfg.time_budget:
        try:
            plan.parse_duration(cfg.time_budget)
        except ConfigError as e:
            between.append(str(e))
        if cfg.lr_schedule != "wsd" or not cfg.decay_lr:
            between.append("time_budget times the cooldown of a warmup-stable-decay schedule from the measured pace: "
                           "add --lr_schedule=wsd (and keep decay_lr=True)")
    if cfg.window_warmup_iters and not 1 <= cfg.window_start <= cfg.attn_window:
        between.append(f"window_warmup_iters={cfg.window_warmup_iters} grows the short attention window from "
                       f"window_start to attn_window: set attn_window, and 1 <= window_start <= attn_window "
                       f"(got window_start={cfg.window_start}, attn_window={cfg.attn_window})")
    if cfg.seq_warmup_iters and not schedule.seq_start_fits(cfg.block_size, cfg.seq_start):
        quarter = f" (e.g. {cfg.block_size // 4})" if cfg.block_size % 4 == 0 else ""
        between.append(f"seq_warmup_iters={cfg.seq_warmup_iters} doubles the row length from seq_start to "
                       f"block_size={cfg.block_size}: set seq_start to block_size divided by a power of two up to "
                       f"{schedule.MAX_SEQ_RATIO}{quarter}; got seq_start={cfg.seq_start}")
    if cfg.depth == "auto" and not cfg.time_budget:
        between.append("depth=auto picks the deepest model that a time budget can train: add --time_budget=... "
                       "(e.g. 8h), or give a depth")
    check_values(cfg, between, "invalid training config:")


def model_config(cfg: TrainConfig) -> GPTConfig:
    """The GPTConfig that the model keys describe."""
    try:
        return GPTConfig(**{f.name: getattr(cfg, f.name) for f in fields(GPTConfig)})
    except ValueError as e:  # model.py depends on torch alone, so its checks raise ValueError
        raise ConfigError(str(e)) from e


def optimizer_settings(cfg: TrainConfig) -> OptimizerSettings:
    return OptimizerSettings(cfg.optimizer, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                             cfg.embedding_lr, cfg.head_lr, cfg.scalar_lr, cfg.muon_momentum,
                             cfg.muon_ns_dtype, cfg.muon_momentum_start, cfg.muon_momentum_warmup, cfg.muon_ns,
                             cfg.muon_normuon, cfg.muon_cautious_wd)


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
    env.print0(report.device_line(env.device, hardware.device_name(env.device), device_reason, dtype,
                                  report.choice_reason(dtype_reason, cfg.dtype == "auto"), env.world_size))
    return dtype, hardware.autocast(env.device, dtype)


def data_dir_of(cfg: TrainConfig) -> str:
    return cfg.data_dir or os.path.join(REPO, "data", cfg.dataset)


def load_data(cfg: TrainConfig, env: Env) -> tuple[TrainLoader, ValSet, dict]:
    """(train loader, fixed val set, tokenizer record of the shards)."""
    data_dir = data_dir_of(cfg)
    meta = read_meta(data_dir)
    tok_record = tokenizer.describe(meta)
    users = ([f"doc_align={cfg.doc_align} opens rows"] if cfg.doc_align != "off" else []) + \
            (["doc_causal=True separates documents"] if cfg.doc_causal else [])
    if users and meta.get("eot_id", cfg.eot_token) != cfg.eot_token:
        raise ConfigError(f"{' and '.join(users)} at eot_token={cfg.eot_token}, but the shards' end-of-text token "
                          f"is {meta['eot_id']} (meta.json): set --eot_token={meta['eot_id']}")
    train_loader = TrainLoader(data_dir, cfg.batch_size, cfg.block_size, cfg.seed, env.rank, env.world_size, env.device,
                               cfg.doc_align, cfg.eot_token)
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


def apply_depth(cfg: TrainConfig, env: Env, dtype: str, amp, ckpt: dict | None, clock: Clock) -> TrainConfig:
    """The depth dial (its rules: fineweb_gpt/plan.py): the keys it sets, each unless set explicitly, printed.
    depth=auto measures this machine first; a resume keeps the depth its run chose."""
    if cfg.depth == 0:
        return cfg
    depth = cfg.depth
    if depth == "auto" and ckpt is not None:
        depth = ckpt["config"].get("depth") or 0
        if not depth:
            env.print0("depth=auto: the run being resumed did not use the depth dial; its keys stay as they were")
            return cfg
    elif depth == "auto":
        depth = depth_by_speed(cfg, env, dtype, amp, clock)
    dialled, notes = plan.dial(cfg, depth, env.world_size, model_config)
    env.print0(f"depth {depth}: " + "; ".join(notes))
    check_config(dialled)  # the dial's learning rates against an explicit min_lr, and the like
    return dialled


AUTO_DEPTHS = (2, 4, 6, 8, 10, 12, 16, 20, 24, 32)  # depth=auto measures these in turn, until one does not fit
SPEED_STEPS = 3  # timed updates per measured depth


def depth_by_speed(cfg: TrainConfig, env: Env, dtype: str, amp, clock: Clock) -> int:
    """depth=auto: this machine's training speed at increasing depths (compiled and batched as the run will
    be), until the budget left cannot train one on its compute-optimal tokens; the deepest that can."""
    budget = plan.parse_duration(cfg.time_budget)
    candidates = []
    for depth in AUTO_DEPTHS:
        trial, _ = plan.dial(cfg, depth, env.world_size, model_config)
        model = GPT(model_config(trial)).to(env.device).train()
        set_memory_options(model, trial, env)
        check_flex_attention(model, dtype, env.device, say=None)  # quiet: the chosen model's run says it
        optimizer, _ = make_optimizer(model, optimizer_settings(trial))
        compiled = torch.compile(model) if hardware.pick_compile(trial.compile, env.device)[0] else model
        tok_per_s = 0.0
        try:
            size = trial.batch_size if trial.batch_size != "auto" else \
                auto_batch_size(trial, env, compiled, optimizer, amp, None)
            tok_per_s = plan.measure_tokens_per_s(compiled, optimizer, amp, env.device, size, trial.block_size,
                                                  SPEED_STEPS)
        except (RuntimeError, NothingFits) as e:
            if not isinstance(e, NothingFits) and not is_out_of_memory(e):
                raise
        if env.any(tok_per_s == 0.0):  # out of memory on some process: deeper models will not fit either
            env.print0(f"depth=auto: depth {depth} does not fit in memory at batch_size={trial.batch_size}")
            break
        # every process takes the same numbers, so all choose the same depth
        tok_per_s, elapsed = env.all_mean(torch.tensor([tok_per_s, clock.elapsed()], device=env.device)).tolist()
        candidates.append(plan.DepthCandidate(depth, model.num_params()["total"], tok_per_s * env.world_size,
                                              budget - elapsed, cfg.tokens_per_param))
        del model, optimizer, compiled
        gc.collect()  # the next depth's model takes this one's place
        torch._dynamo.reset()  # each depth compiles anew: no recompile limit reached, no stale graphs
        if env.device.startswith("cuda"):
            torch.cuda.empty_cache()
        if not candidates[-1].fits:
            break
    if not candidates:
        raise ConfigError(f"depth=auto: even depth {AUTO_DEPTHS[0]} does not fit in memory; lower batch_size or "
                          f"block_size, or use batch_size=auto")
    chosen = plan.choose_depth(candidates)
    env.print0(f"depth=auto: measured on {hardware.device_name(env.device)} ({SPEED_STEPS} updates each), over the "
               f"{duration(budget - clock.elapsed())} left of the budget:\n" + plan.depth_table(candidates, chosen))
    if not chosen.fits:
        env.print0(f"depth=auto: no depth fits its compute-optimal tokens in this budget; depth {chosen.depth} "
                   f"trains on {chosen.tokens_in_budget / chosen.tokens_needed:.1%} of them")
    return chosen.depth


def init_model(cfg: TrainConfig, ckpt: dict | None, env: Env) -> GPT:
    """The model on its device: from the checkpoint, OpenAI's GPT-2, or freshly initialised."""
    torch.manual_seed(cfg.seed)
    if ckpt is not None:
        stored = {k: v for k, v in ckpt["model_args"].items() if hasattr(cfg, k) and k != "dropout"}
        changed = report.changes(stored, {k: getattr(cfg, k) for k in stored})
        if changed:
            env.print0(f"resume: the model comes from the checkpoint, so these config values are ignored "
                       f"(checkpoint -> config): {'; '.join(changed)}")
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
    parts = [f"{report.count(counts['wte'])} token embedding" + (" (shared with the output head)" if c.tie_embeddings else ""),
             *([f"{report.count(counts['lm_head'])} output head"] if counts["lm_head"] else []),
             *([f"{report.count(counts['wpe'])} position embedding"] if counts["wpe"] else []),
             *([f"{report.count(counts['value_embeds'])} value embeddings"] if counts["value_embeds"] else []),
             f"{report.count(counts['blocks'])} in the blocks"]
    env.print0(f"model: {report.count(counts['total'])} parameters = " + " + ".join(parts))
    env.print0(f"model: positions {c.pos_emb}, {c.norm}, qk_norm {c.qk_norm}, mlp {c.mlp}, tied head "
               f"{c.tie_embeddings}, logit softcap {c.logit_softcap or 'off'}, bias {c.bias}")
    env.print0(f"model: attention {describe_attention(c, cfg)}")
    return model


def describe_attention(c: GPTConfig, cfg: TrainConfig) -> str:
    """Which tokens a query sees: its document or the whole row, and where the short window is, for the log."""
    kind = f"document-causal (documents separated by token {c.eot_token})" if c.doc_causal else "causal"
    short = sum(short_window_layers(c))
    if not short:
        return f"{kind}, the whole context in every layer"
    start = min(cfg.window_start, c.attn_window)  # as apply_schedules grows it
    grows = (f", growing from {start} over {cfg.window_warmup_iters:,} steps"
             if cfg.window_warmup_iters and start < c.attn_window else "")
    covers = ""
    if c.attn_window >= cfg.block_size:  # as long as the rows or longer
        covers = (f"; the window is the whole row of {cfg.block_size} tokens" +
                  (" once it has grown to that" if grows and start < cfg.block_size else ""))
    return (f"{kind}, a window of the last {c.attn_window} tokens in {short} of {c.n_layer} layers "
            f"(pattern {c.window_pattern}){grows}, the others the whole context{covers}")


def set_memory_options(model: GPT, cfg: TrainConfig, env: Env) -> None:
    """The switches that trade compute for memory (the function computed stays the same), set on the raw
    model before compile and before batch_size=auto measures what fits."""
    chunked = model.set_chunked_loss(cfg.chunked_loss)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    env.print0(f"memory: chunked loss {f'on ({model.loss_kind})' if chunked else 'off'}, activation checkpointing "
               f"{'on' if cfg.activation_checkpointing else 'off'}")


_shown_flex_failures: set[str] = set()


@functools.cache
def flex_attention_failure(device: str, dtype: str, n_head: int, head_size: int) -> tuple[str, str] | None:
    """Why FlexAttention does not run here, as (summary, traceback) (None: it does), probed once per process for
    each device, dtype and head shape: every model built with them (depth=auto's trials, then the run) takes the same
    answer."""
    return flex_attention_error(device, getattr(torch, dtype), n_head, head_size)


def check_flex_attention(model: GPT, dtype: str, device: str, say: Callable[[str], None] | None = print) -> None:
    """With document or window masks on CUDA: a small FlexAttention forward and backward, with the model's kernel
    options, runs on this GPU; else the model uses SDPA with dense masks, and `say` tells why. Every script that
    trains a masked model (train.py, bench.py, bench/) calls this before its first forward; say=None: quietly
    (depth=auto's trials), leaving the traceback to the next model's check."""
    if not device.startswith("cuda") or not masked(model.config):
        return
    failure = flex_attention_failure(device, dtype, model.config.n_head, model.config.head_size)
    if failure:
        model.use_dense_attention()
        if say is None:
            return
        summary, error = failure[0][:300], failure[1]
        line = (f"attention: FlexAttention does not run on {hardware.device_name(device)} ({summary}); using SDPA "
                f"with dense masks instead (the same results, slower and with more memory)")
        shown = error in _shown_flex_failures  # a process that trains many models (bench/) shows it once
        _shown_flex_failures.add(error)
        say(line if shown else f"{line}. What failed:\n{error.rstrip()}")


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


def batch_schedule(cfg: TrainConfig, world_size: int) -> BatchSchedule:
    """The micro-steps per process of each update, for a micro-batch of cfg.batch_size sequences."""
    accum_steps, tokens_per_step = resolve_batch(cfg, world_size)
    return BatchSchedule(accum_steps, tokens_per_step // accum_steps, cfg.batch_warmup_iters, cfg.batch_start_frac)


def describe_plan(cfg: TrainConfig, env: Env, clock: Clock) -> str:
    """plan_only's line: steps, tokens (a batch warmup's smaller updates counted) and parameters. batch_size=auto
    chooses its micro-batch only when training starts: counted here in micro-batches of one sequence, so a
    batch warmup's tokens are a lower bound (the chosen micro-batch rounds each update up to whole micro-batches)."""
    batches = batch_schedule(replace(cfg, batch_size=1) if cfg.batch_size == "auto" else cfg, env.world_size)
    params = count_params(model_config(cfg))["total"]
    return plan.Horizon(cfg, LoopState(), env, clock, params, batches.tokens_per_step, batches.tokens_before).describe()


def setup_batch(cfg: TrainConfig, env: Env, model: GPT, optimizer, amp,
                state: LoopState) -> tuple[TrainConfig, BatchSchedule]:
    """(cfg with batch_size=auto replaced by the micro-batch chosen, the micro-steps per rank of each update),
    printed. The loop state keeps auto's choice, so that a resume does not probe again, and the tokens trained
    on (a checkpoint from before that count trained every update at the full batch)."""
    if cfg.batch_size == "auto":
        cfg = replace(cfg, batch_size=auto_batch_size(cfg, env, model, optimizer, amp, state.auto_batch_size))
        state.auto_batch_size = cfg.batch_size
    else:
        state.auto_batch_size = None
    batches = batch_schedule(cfg, env.world_size)
    accum_steps, tokens_per_step = batches.accum_steps, batches.tokens_per_step
    env.print0(f"batch: {tokens_per_step:,} tokens/update = {report.plural(cfg.batch_size, 'sequence')} x "
               f"{report.plural(cfg.block_size, 'token')} x {report.plural(accum_steps, 'micro-step')} x "
               f"{report.plural(env.world_size, 'process', 'processes')}")
    if cfg.batch_warmup_iters:
        if batches.accum_at(0) == accum_steps:
            raise ConfigError(f"batch_warmup_iters={cfg.batch_warmup_iters} grows the batch through the accumulation "
                              f"count, but batch_start_frac={cfg.batch_start_frac} of {accum_steps} micro-step(s) per "
                              f"process rounds up to all of them: lower batch_size or raise total_batch_size so that "
                              f"an update holds several micro-steps, or lower batch_start_frac")
        env.print0(f"batch schedule: {batches.accum_at(0)} of {accum_steps} micro-steps per process at step 0, all "
                   f"{accum_steps} from step {cfg.batch_warmup_iters} on")
    if state.tokens is None:
        state.tokens = state.step * tokens_per_step
    return cfg, batches


def check_can_continue(ckpt: dict, state: LoopState, cfg: TrainConfig, env: Env) -> None:
    """A resume that this config cannot continue stops here, before any batch_size=auto probing."""
    saved_optimizer = ckpt["config"].get("optimizer", "adamw")
    if saved_optimizer != cfg.optimizer:
        raise ConfigError(f"the checkpoint was trained with optimizer={saved_optimizer}, this run asks for "
                          f"optimizer={cfg.optimizer}: its optimizer state cannot carry over; resume with "
                          f"--optimizer={saved_optimizer}, or start a new run in another --out_dir")
    known = {f.name for f in fields(TrainConfig)}  # a key this version no longer has plays no part in the schedule
    old = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in known})
    # Muon's variants are saved with its state and the saved values would win over this run's keys: refuse
    changed = [f"--{k}={getattr(old, k)!r} (this run: {getattr(cfg, k)!r})" for k in MUON_VARIANT_KEYS
               if k in ckpt["config"] and getattr(old, k) != getattr(cfg, k)]
    if changed and cfg.optimizer == "muon":
        raise ConfigError(f"the checkpoint's Muon was built with {', '.join(changed)}; its optimizer state carries "
                          f"those settings, so a resume keeps them: resume with the checkpoint's values, or start a "
                          f"new run in another --out_dir")
    change = None if cfg.time_budget else schedule.describe_change(state.step, old, cfg)
    if change:
        env.print0(f"resume: {change}")
    env.print0(f"resume: from step {state.step} of {cfg.out_dir}/{LATEST}, best val loss {state.best_val_loss:.4f}")
    if state.step > cfg.max_iters and not cfg.time_budget:
        raise ConfigError(f"the checkpoint is at step {state.step}, past max_iters={cfg.max_iters}; "
                          f"raise max_iters to continue")


def restore(ckpt: dict | None, state: LoopState, cfg: TrainConfig, env: Env, optimizer, scaler,
            loader: TrainLoader, dtype: str) -> None:
    """What a resume brings back besides the loop state and the weights: optimizer, GradScaler, data
    position and every rank's RNG (so dropout masks continue). A new run starts its loader at the start."""
    if ckpt is None:
        state.loader = loader.state_dict()
        if env.rank:
            torch.manual_seed(cfg.seed + env.rank)  # different dropout masks per rank
        return
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler.is_enabled() == bool(ckpt["scaler"]):  # a GradScaler saves an empty state when fp16 is off
        scaler.load_state_dict(ckpt["scaler"])
    else:
        env.print0(f"resume: the checkpoint trained {'without' if scaler.is_enabled() else 'with'} float16, this run "
                   f"in {dtype}: " + ("the loss scale starts afresh" if scaler.is_enabled() else "no loss scale needed"))
    loader.load_state_dict(state.loader)
    rngs = ckpt["rng"]
    if len(rngs) == env.world_size:
        set_rng_state(rngs[env.rank])
    else:  # a resume on another number of processes: same batches, new dropout masks
        set_rng_state(rngs[0])
        env.print0(f"resume: {len(rngs)} process(es) saved RNG states, {env.world_size} now: dropout masks will differ")
        if env.rank:
            torch.manual_seed(cfg.seed + env.rank + state.step)


def compile_model(raw_model: GPT, cfg: TrainConfig, env: Env) -> torch.nn.Module:
    """raw_model compiled (or itself); raw_model stays unwrapped (saved, evaluated)."""
    use_compile, compile_reason = hardware.pick_compile(cfg.compile, env.device)
    env.print0(f"compile: {compile_reason}")
    return torch.compile(raw_model) if use_compile else raw_model


def wrap_ddp(model: torch.nn.Module, env: Env) -> torch.nn.Module:
    """The model the loop trains: DDP-wrapped under torchrun. gradient_as_bucket_view: the gradients are views
    into DDP's all-reduce buckets, not a second fp32 copy of every gradient."""
    if not env.ddp:
        return model
    return DDP(model, device_ids=[env.local_rank] if env.device.startswith("cuda") else None,
               gradient_as_bucket_view=True)


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


def save_run(cfg: TrainConfig, names: tuple[str, ...], model: GPT, optimizer, scaler, state: LoopState,
             tok_record: dict, env: Env) -> None:
    """Checkpoint the run under each of `names` (same bytes). Called on every rank: each contributes its
    RNG state; rank 0 writes."""
    rngs = env.gather(rng_state())
    if not env.master:
        return
    first = os.path.join(cfg.out_dir, names[0])
    save_checkpoint(training_checkpoint(model, optimizer, scaler, asdict(cfg), rngs, tok_record, state), first)
    for name in names[1:]:
        with raised_as(out_dir_failed, OSError):
            publish_copy(first, os.path.join(cfg.out_dir, name))
    linked = len(names) > 1 and os.path.samefile(first, os.path.join(cfg.out_dir, names[1]))
    print(f"saved {' and '.join(names)} in {cfg.out_dir} at step {state.step}" +
          (" (hard links: one file on disk)" if linked else ""), flush=True)


def diverged(step_loss: float, grad_norm: float, step: int, cfg: TrainConfig) -> TrainingError:
    return TrainingError(
        f"loss is {step_loss} (grad norm {grad_norm}) at step {step}: training diverged. Nothing was "
        f"saved after the last good checkpoint in {cfg.out_dir}. Lower learning_rate, keep grad_clip=1.0, or "
        f"use dtype=bfloat16, then rerun (or --init_from=resume from the last checkpoint)")


def apply_schedules(step: int, cfg: TrainConfig, model: GPT, optimizer, batches: BatchSchedule,
                    state: LoopState) -> tuple[int, int, int]:
    """Set what follows a schedule at `step` besides the learning rate (which the horizon gives): the short
    attention window and Muon's momentum. Returns (micro-steps per process, tokens, row length) of update `step`
    (a batch warmup's are fewer tokens; a sequence-length warmup's, shorter rows of the same tokens). Each is a
    function of the step, so a resume continues it."""
    window = model.config.attn_window  # the model's, not the config's: a resumed model is the checkpoint's
    if window:  # without a short window the masks keep the full context
        state.attn_window = schedule.attn_window(step, window, min(cfg.window_start, window), cfg.window_warmup_iters)
        model.set_attn_window(state.attn_window)  # saved too: sample/eval/export run with it
    else:
        state.attn_window = None
    momentum = schedule.get_muon_momentum(step, cfg)
    for group in optimizer.param_groups:
        if "momentum" in group:  # Muon's groups (AdamW's have betas)
            group["momentum"] = momentum
    return (batches.accum_at(step), batches.tokens_at(step),
            schedule.seq_len(step, cfg.block_size, cfg.seq_start, cfg.seq_warmup_iters))


# ------------------------------------------------------------------ the run

def train(cfg: TrainConfig) -> dict:
    """Run training; returns a summary (final step, losses). Raises on user errors."""
    started = time.time()  # a time budget counts the set-up too
    check_config(cfg)
    device, device_reason = hardware.pick_device(cfg.device)
    with distributed.setup(device, cfg.backend) as env, runlock.job_lock(cfg.out_dir, env, f"--out_dir={cfg.out_dir}",
                                                                          ConfigError):  # one run per out_dir
        refuse_to_overwrite(cfg)
        dtype, amp = setup_device(cfg, env, device_reason)
        ckpt = checkpoint_to_resume(cfg, env)
        for split in ("train", "val") if not cfg.plan_only else ():  # missing data is reported now, not after
            find_shards(data_dir_of(cfg), split)                     # minutes of depth=auto or batch_size=auto
        cfg = apply_depth(cfg, env, dtype, amp, ckpt, Clock(0.0, started))  # a resume keeps the depth its run chose
        if cfg.plan_only:  # the plan, then stop (no data needed)
            env.print0(describe_plan(cfg, env, Clock(0.0, started)))
            return {"plan": asdict(cfg)}
        raw_model = init_model(cfg, ckpt, env)  # saved and evaluated unwrapped: canonical keys
        state = loop_state(ckpt, os.path.join(cfg.out_dir, LATEST))  # where the loop starts
        clock = Clock(state.elapsed, started)  # a time budget counts the time spent before a resume, and set-up
        if ckpt is not None:
            check_can_continue(ckpt, state, cfg, env)
        set_memory_options(raw_model, cfg, env)
        check_flex_attention(raw_model, dtype, env.device, env.print0)
        optimizer, peak_lrs, scaler = setup_optimizer(raw_model, cfg, env, dtype)
        # batch_size=auto is probed with the compiled model and the optimizer; the data, batched by it, comes after
        compiled = compile_model(raw_model, cfg, env)
        cfg, batches = setup_batch(cfg, env, compiled, optimizer, amp, state)
        tokens_per_step = batches.tokens_per_step  # of a full update
        train_loader, val_set, tok_record = load_data(cfg, env)
        check_data_fits(raw_model, tok_record, train_loader, val_set)
        restore(ckpt, state, cfg, env, optimizer, scaler, train_loader, dtype)
        model = wrap_ddp(compiled, env)
        log = RunLog(cfg, env, state.step if ckpt else None, state.wandb_run_id,
                     {"config": asdict(cfg), "model": asdict(raw_model.config), "tokens_per_step": tokens_per_step,
                      "world_size": env.world_size, "dtype": dtype, "device": hardware.device_name(env.device),
                      "tokenizer": tok_record})  # plot.py shows reference curves only for runs on their tokenizer
        state.wandb_run_id = log.wandb.id or state.wandb_run_id
        flops_per_token = functools.cache(raw_model.flops_per_token)  # by row length: a seq warmup's are shorter
        start_step, eval_s = state.step, 0.0
        horizon = plan.Horizon(cfg, state, env, clock, raw_model.num_params()["total"], tokens_per_step,
                               batches.tokens_before)
        if cfg.time_budget:
            env.print0(horizon.describe())
        seq_warmup = cfg.seq_warmup_iters > start_step and cfg.seq_start < cfg.block_size  # shorter rows ahead
        if seq_warmup:
            env.print0(f"sequence-length warmup: rows of {cfg.seq_start} tokens at step 0, doubled at equal intervals "
                       f"to {cfg.block_size} at step {cfg.seq_warmup_iters:,} (the same tokens per update)")
        resumed_val = state.val_loss if ckpt is not None else None  # measured at start_step before the stop
        last_loss = val_loss = val_step = budget_end = None
        step_times: collections.deque[float] = collections.deque(maxlen=20)  # recent update times, for the ETA
        stop = StopFlag()  # from here on, the finally below closes the log and restores the signal handlers
        try:
            x, y, batch_state = train_loader.next_batch()
            for step in itertools.count(start_step):
                state.step, state.elapsed = step, clock.elapsed()
                lr, last_step, final_update = horizon.at(step, step_times, eval_s)  # max_iters or the clock decides
                accum_steps, step_tokens, row_len = apply_schedules(step, cfg, raw_model, optimizer, batches, state)
                if seq_warmup and compiled is not raw_model and step == cfg.seq_warmup_iters:
                    torch._dynamo.reset()  # the warmup's lengths made the graph dynamic in B and T: full rows static
                row = {"step": step, "tokens": state.tokens}
                # evaluate at the start, every eval_interval and after the last update (a resumed run re-evaluates
                # its first step: the same number as before the stop, a check that the model came back intact)
                before_stop = resumed_val if step == start_step else None
                if step % cfg.eval_interval == 0 or last_step or before_stop is not None:
                    t_eval = time.time()
                    row["val_loss"] = val_loss = state.val_loss = evaluate(raw_model, val_set, amp, env)
                    val_step = step
                    val_bpb = val_set.bits_per_byte(val_loss)
                    if val_bpb is not None:
                        row["val_bpb"] = val_bpb
                    env.print0(f"step {step}: val loss {val_loss:.4f}" +
                               (f" (before the stop: {before_stop:.4f})" if before_stop is not None else "") +
                               f" | val bpb {f'{val_bpb:.4f}' if val_bpb is not None else 'n/a'} | "
                               f"elapsed {duration(clock.elapsed())}")
                    names = ((LATEST,) if cfg.always_save_checkpoint or last_step else ()) + \
                            ((BEST,) if val_loss < state.best_val_loss else ())
                    state.best_val_loss = min(state.best_val_loss, val_loss)
                    if step > start_step and names:
                        save_run(cfg, names, raw_model, optimizer, scaler, state, tok_record, env)
                    # what the budget keeps for the final eval and save: the latest one (the first includes one-off costs)
                    eval_s = time.time() - t_eval if step > start_step or not eval_s else eval_s
                if last_step:
                    log.record({**row, "elapsed": clock.elapsed()})
                    budget_end = step  # a budgeted run ends where its clock says: finished
                    break

                # ---- one optimizer update: accum_steps micro-batches, then clip, step
                t_step = time.time()
                for group, peak in zip(optimizer.param_groups, peak_lrs):
                    group["lr"] = peak * lr / cfg.learning_rate  # every group follows the main group's schedule
                loss_sum = torch.zeros((), device=env.device)
                for micro in range(accum_steps):
                    sync = not env.ddp or micro == accum_steps - 1  # all-reduce gradients on the last micro-step only
                    with (nullcontext() if sync else model.no_sync()), amp:
                        _, loss = model(x.reshape(-1, row_len), y.reshape(-1, row_len))  # the same tokens
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
                state.tokens += step_tokens

                if step % cfg.log_interval == 0 or final_update:  # the last update too: curves end with the run
                    mfu = hardware.mfu(flops_per_token(row_len) * step_tokens / dt, env.device, cfg.peak_tflops,
                                       env.world_size)
                    mem, mem_kind = hardware.peak_memory(env.device)
                    row.update(loss=last_loss, lr=lr, grad_norm=grad_norm, step_tokens=step_tokens,
                               tok_per_s=step_tokens / dt, mfu=mfu, elapsed=clock.elapsed(), peak_mem_gib=mem)
                    env.print0(f"step {step}: loss {last_loss:.4f} | lr {lr:.3e} | grad norm {grad_norm:.3f} | "
                               f"{step_tokens / dt:,.0f} tok/s | MFU {f'{mfu:.1%}' if mfu is not None else 'n/a'} | "
                               f"{mem_kind} {f'{mem:.2f} GiB' if mem is not None else 'n/a'} | {dt * 1000:.0f} ms | "
                               f"{short_count(state.tokens)} tokens | "
                               f"ETA {horizon.time_left(step, step_times)}")
                if len(row) > 2:
                    log.record(row)
                if env.any(stop.signal is not None):  # every rank stops at the same step
                    state.step, state.elapsed, state.val_loss = step + 1, clock.elapsed(), None  # no eval at step + 1
                    save_run(cfg, (LATEST,), raw_model, optimizer, scaler, state, tok_record, env)
                    env.print0(f"stopped after step {step + 1}; continue with --init_from=resume (or auto)")
                    break
        finally:
            stop.restore()
            log.close()
            del model  # a DDP wrapper holds the process group: release it before the group is destroyed
        final = val_loss if val_step == state.step else None  # a stop between evals has no val loss of its step
        best = state.best_val_loss if math.isfinite(state.best_val_loss) else None
        env.print0(report.run_summary(report.RunSummary(
            cfg.out_dir, start_step, state.step, cfg.max_iters if not cfg.time_budget else budget_end, state.tokens,
            clock.elapsed(), final,
            val_set.bits_per_byte(final) if final is not None else None, best,
            val_set.bits_per_byte(best) if best is not None else None, [LATEST, BEST])))
    return {"step": state.step, "loss": last_loss, "val_loss": val_loss, "best_val_loss": state.best_val_loss}


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
        train(cfg)  # anything but a UserError is a bug: it propagates with its traceback, after train's cleanup
    except UserError as e:
        fail(f"train.py: error: {e}")
    except torch._dynamo.exc.BackendCompilerFailed as e:  # no C compiler, a triton that does not fit the GPU, ...
        # raised by the first call of the compiled model inside the loop, not where torch.compile is called
        fail(f"train.py: error: torch.compile could not build the model on this machine "
             f"({str(e).strip().splitlines()[0][:300]}); run again with --compile=False")


if __name__ == "__main__":
    main()
