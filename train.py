"""Train a GPT on token shards: one GPU, CPU, or many GPUs through torchrun.

    python train.py config/train_fineweb.py --batch_size=8 --compile=False
    torchrun --standalone --nproc_per_node=8 train.py config/train_fineweb.py
    python train.py config/train_fineweb.py --init_from=resume --max_iters=12000

The file reads top to bottom: config, device/dtype/distributed setup, data, model, optimizer,
compile/DDP wrap, helpers, then the loop. `python train.py --help` lists every key.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import hardware
from checkpoint import (BEST, LATEST, CheckpointError, build_model, load_checkpoint, publish_copy, rng_state,
                        save_checkpoint, set_rng_state)
from configurator import ConfigError, cli, format_config, key
from dataloader import ShardError, TrainLoader, ValSet, read_meta
from model import GPT, GPTConfig

REPO = os.path.dirname(os.path.abspath(__file__))


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = key("out", "run directory: checkpoints, config.json, metrics.jsonl")
    eval_interval: int = key(250, "evaluate (and checkpoint) every this many steps, plus at the start and end")
    log_interval: int = key(1, "print and record a log line every this many steps")
    eval_iters: int = key(20, "val batches per eval; always the same first eval_iters*batch_size val windows")
    always_save_checkpoint: bool = key(True, "write ckpt.pt at every eval (else only at the end); ckpt_best.pt tracks the best val")
    init_from: str = key("scratch", "'scratch', 'resume' (from out_dir/ckpt.pt) or gpt2, gpt2-medium, gpt2-large, gpt2-xl")
    # wandb
    wandb_log: bool = key(False, "log to Weights & Biases (WANDB_MODE=offline works without a network)")
    wandb_project: str = key("fineweb-gpt", "wandb project")
    wandb_run_name: str = key("", "wandb run name ('' = the out_dir's name)")
    # data
    dataset: str = key("fineweb", "a folder under data/ holding shards (see data/fineweb/prepare.py)")
    data_dir: str = key("", "any folder of shards; overrides dataset")
    batch_size: int = key(12, "sequences per micro-batch on each GPU/process")
    block_size: int = key(1024, "context length in tokens")
    gradient_accumulation_steps: int = key(0, "micro-batches per update summed over all ranks (0 = derive from total_batch_size)")
    total_batch_size: int = key(0, "tokens per update; gradient_accumulation_steps is derived from it (0 = not set)")
    # model
    n_layer: int = key(12, "transformer blocks")
    n_head: int = key(12, "attention heads")
    n_embd: int = key(768, "embedding width")
    dropout: float = key(0.0, "dropout probability (0 for pretraining; try 0.1+ when fine-tuning)")
    bias: bool = key(True, "biases in Linear and LayerNorm layers, as GPT-2")
    vocab_size: int = key(50304, "embedding rows: GPT-2's 50257 padded to a multiple of 64")
    # AdamW and schedule
    learning_rate: float = key(6e-4, "peak learning rate")
    max_iters: int = key(5000, "optimizer updates in the whole run")
    weight_decay: float = key(0.1, "AdamW weight decay, applied to matrices and embeddings only")
    beta1: float = key(0.9, "AdamW beta1")
    beta2: float = key(0.95, "AdamW beta2")
    grad_clip: float = key(1.0, "clip the global gradient norm to this (0 = no clipping)")
    decay_lr: bool = key(True, "linear warmup then cosine decay to min_lr (else constant learning_rate)")
    warmup_iters: int = key(200, "steps of linear warmup")
    lr_decay_iters: int = key(0, "step where the cosine reaches min_lr (0 = max_iters)")
    min_lr: float = key(6e-5, "final learning rate, ~learning_rate/10 (Chinchilla)")
    # system
    backend: str = key("auto", "DDP backend: 'nccl', 'gloo' or 'auto' (nccl on CUDA, gloo on CPU)")
    device: str = key("auto", "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'")
    dtype: str = key("auto", "'auto' (bf16 where supported, fp16+GradScaler on older GPUs, fp32 on CPU), or force one")
    compile: bool | None = key(None, "torch.compile the model: None = auto (on for CUDA), True, False")
    seed: int = key(1337, "seed for initialisation, dropout and data order")
    peak_tflops: float = key(0.0, "your device's dense bf16 peak for MFU (0 = look it up; unknown devices show n/a)")


class TrainingError(RuntimeError):
    """Stops the run with a message for the user (diverged loss, impossible config)."""


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


def check_config(cfg: TrainConfig) -> None:
    """Every problem with the training keys in one message (model keys are checked by GPTConfig)."""
    problems = []
    if cfg.init_from not in ("scratch", "resume") and not cfg.init_from.startswith("gpt2"):
        problems.append(f"init_from must be 'scratch', 'resume' or gpt2*, got {cfg.init_from!r}")
    for name in ("eval_interval", "log_interval", "eval_iters", "batch_size", "block_size"):
        if getattr(cfg, name) <= 0:
            problems.append(f"{name} must be positive, got {getattr(cfg, name)}")
    for name in ("max_iters", "warmup_iters", "lr_decay_iters", "gradient_accumulation_steps", "total_batch_size"):
        if getattr(cfg, name) < 0:
            problems.append(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.learning_rate <= 0 or cfg.min_lr < 0 or cfg.min_lr > cfg.learning_rate:
        problems.append(f"need 0 <= min_lr <= learning_rate, got min_lr={cfg.min_lr}, learning_rate={cfg.learning_rate}")
    if cfg.backend not in ("auto", "nccl", "gloo"):
        problems.append(f"backend must be 'auto', 'nccl' or 'gloo', got {cfg.backend!r}")
    if problems:
        raise ConfigError("\n  ".join(["invalid training config:"] + problems))


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine from learning_rate down to min_lr at lr_decay_iters, then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if step >= decay_iters:
        return cfg.min_lr
    ratio = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def make_optimizer(model: GPT, cfg: TrainConfig) -> tuple[torch.optim.AdamW, str]:
    """AdamW with weight decay on matrices and embeddings only (not biases or LayerNorm gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs), "fused"
    except (RuntimeError, TypeError):  # fused kernels are missing for this device type
        return torch.optim.AdamW(groups, **kwargs), "foreach"


class NullLogger:
    """wandb's interface, doing nothing, so the loop never asks whether wandb is on."""
    def log(self, *args, **kwargs): pass
    def finish(self): pass


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes its step, saves and exits."""
    # One stop request can arrive more than once: a Ctrl-C reaches every process in the terminal's
    # process group and a launcher may forward it again (torchrun does, then waits 30 s before SIGKILL;
    # SLURM signals every task). Repeats this soon are the same request, not a second Ctrl-C.
    DUPLICATE_WINDOW_S = 3.0

    def __init__(self):
        self.signal, self.first_at = None, 0.0
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

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
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)
    return open(path, "a")


def train(cfg: TrainConfig) -> dict:
    """Run training; returns a summary (final step, losses). Raises on user errors."""
    check_config(cfg)
    existing = [f for f in (LATEST, BEST) if os.path.exists(os.path.join(cfg.out_dir, f))]
    if cfg.init_from != "resume" and existing:
        raise ConfigError(f"{cfg.out_dir} already holds a checkpoint ({', '.join(existing)}) that a new run would "
                          f"overwrite; continue it with --init_from=resume, or use another --out_dir (or delete "
                          f"{cfg.out_dir} to start over)")

    # -------------------------------------------------------------- device, dtype, distributed
    ddp = int(os.environ.get("RANK", -1)) != -1  # launched by torchrun
    rank, local_rank, world_size = 0, 0, 1
    device, device_reason = hardware.pick_device(cfg.device)
    if ddp:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.startswith("cuda") else "gloo")
        dist.init_process_group(backend=backend)
    master = rank == 0

    def print0(*args, **kwargs):
        if master:
            print(*args, **kwargs, flush=True)

    dtype, dtype_reason = hardware.pick_dtype(cfg.dtype, device)
    accum_steps, tokens_per_step = resolve_batch(cfg, world_size)
    torch.manual_seed(cfg.seed)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores: free speed, tiny error
        torch.backends.cudnn.allow_tf32 = True
    amp = hardware.autocast(device, dtype)
    print0(f"device: {device} ({hardware.device_name(device)}; {device_reason}), world size {world_size}")
    print0(f"dtype: {dtype} ({dtype_reason})")
    print0(f"batch: {tokens_per_step:,} tokens/update = {cfg.batch_size} seqs x {cfg.block_size} tokens "
           f"x {accum_steps} micro-steps x {world_size} processes")

    # -------------------------------------------------------------- data
    data_dir = cfg.data_dir or os.path.join(REPO, "data", cfg.dataset)
    meta = read_meta(data_dir)
    tokenizer = {"name": meta.get("tokenizer", "gpt2"), "eot_id": meta.get("eot_id", 50256),
                 "vocab_size": meta.get("vocab_size", 50257)}
    train_loader = TrainLoader(data_dir, cfg.batch_size, cfg.block_size, cfg.seed, rank, world_size, device)
    val_set = ValSet(data_dir, cfg.batch_size, cfg.block_size, cfg.eval_iters, device)

    # -------------------------------------------------------------- model
    ckpt = None
    if cfg.init_from == "resume":
        ckpt_path = os.path.join(cfg.out_dir, LATEST)
        ckpt = load_checkpoint(ckpt_path)
        changed = {k: (v, getattr(cfg, k)) for k, v in ckpt["model_args"].items()
                   if hasattr(cfg, k) and getattr(cfg, k) != v and k != "dropout"}
        if changed:
            print0(f"resume: model shape comes from the checkpoint; ignoring {changed} (checkpoint, config)")
        model = build_model(ckpt, ckpt_path, dropout=cfg.dropout)
    elif cfg.init_from.startswith("gpt2"):
        model = GPT.from_pretrained(cfg.init_from, dropout=cfg.dropout)
        print0(f"init: OpenAI {cfg.init_from} weights; the model shape comes from them (n_layer/n_head/n_embd ignored)")
    else:
        model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=cfg.vocab_size, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias))
    if model.config.block_size < cfg.block_size:
        raise ConfigError(f"block_size={cfg.block_size} exceeds the model's {model.config.block_size}")
    if tokenizer["vocab_size"] > model.config.vocab_size:
        raise ConfigError(f"the data's tokenizer ({tokenizer['name']}) has {tokenizer['vocab_size']} tokens but the "
                          f"model only {model.config.vocab_size} embeddings; raise vocab_size")
    model.to(device)
    counts = model.num_params()
    print0(f"model: {counts['total'] / 1e6:.2f}M parameters = {counts['wte'] / 1e6:.2f}M token embedding "
           f"(shared with the output head) + {counts['wpe'] / 1e6:.2f}M position embedding + "
           f"{counts['blocks'] / 1e6:.2f}M in the blocks")

    # -------------------------------------------------------------- optimizer
    optimizer, optimizer_kind = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=(dtype == "float16"))
    start_step, best_val, elapsed_before, wandb_id = 0, float("inf"), 0.0, None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        train_loader.load_state_dict(ckpt["loader"])
        start_step, best_val = ckpt["step"], ckpt["best_val_loss"]
        elapsed_before, wandb_id = ckpt.get("elapsed", 0.0), ckpt.get("wandb_run_id")
        old_cfg = ckpt["config"]
        if (old_cfg["lr_decay_iters"] or old_cfg["max_iters"]) != (cfg.lr_decay_iters or cfg.max_iters):
            print0(f"resume: cosine schedule now ends at step {cfg.lr_decay_iters or cfg.max_iters} (was "
                   f"{old_cfg['lr_decay_iters'] or old_cfg['max_iters']}): lr at step {start_step} goes from "
                   f"{get_lr(start_step, TrainConfig(**old_cfg)):.3g} to {get_lr(start_step, cfg):.3g}")
        print0(f"resume: from step {start_step} of {cfg.out_dir}/{LATEST}, best val loss {best_val:.4f}")
        if start_step > cfg.max_iters:
            raise ConfigError(f"the checkpoint is at step {start_step}, past max_iters={cfg.max_iters}; "
                              f"raise max_iters to continue")

    # -------------------------------------------------------------- compile and DDP wrap
    raw_model = model  # saved and evaluated without compile/DDP wrappers: canonical keys
    use_compile, compile_reason = hardware.pick_compile(cfg.compile, device)
    print0(f"optimizer: AdamW ({optimizer_kind}); compile: {compile_reason}")
    if use_compile:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device.startswith("cuda") else None)

    # -------------------------------------------------------------- run directory, logging
    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump({"config": asdict(cfg), "model": asdict(raw_model.config), "tokens_per_step": tokens_per_step,
                       "world_size": world_size, "dtype": dtype, "device": hardware.device_name(device)}, f, indent=2)
    print0("config:\n" + format_config(cfg))
    metrics = open_metrics(os.path.join(cfg.out_dir, "metrics.jsonl"), start_step if ckpt else None) if master else None
    logger = NullLogger()
    if cfg.wandb_log and master:
        import wandb
        logger = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or os.path.basename(cfg.out_dir.rstrip("/")),
                            id=wandb_id, resume="allow", config=asdict(cfg), dir=cfg.out_dir)
        wandb_id = logger.id  # stored in checkpoints so a resumed run continues the same wandb run
    peak = cfg.peak_tflops or (hardware.peak_tflops(hardware.device_name(device)) if device.startswith("cuda") else None)
    flops_per_step = raw_model.flops_per_token(cfg.block_size) * tokens_per_step

    # -------------------------------------------------------------- helpers
    def all_mean(value: torch.Tensor) -> torch.Tensor:
        if ddp:
            dist.all_reduce(value)  # SUM: gloo has no AVG
            value /= world_size
        return value

    @torch.no_grad()
    def evaluate() -> float:
        """Mean loss over the fixed val windows, split across ranks."""
        raw_model.eval()
        total = torch.zeros(2, device=device)  # (sum of batch losses, batches)
        for x, y in val_set.batches(rank, world_size):
            with amp:
                _, loss = raw_model(x, y)
            total += torch.stack([loss.float(), torch.ones((), device=device)])
        if ddp:
            dist.all_reduce(total)
        raw_model.train()
        return (total[0] / total[1]).item()

    def all_rng_states() -> list[dict]:
        """Every rank's RNG state (dropout masks differ per rank); called on all ranks, kept by rank 0."""
        states = [rng_state()]
        if ddp:
            states = [None] * world_size
            dist.all_gather_object(states, rng_state())
        return states

    def save(step: int, val_loss: float | None, to: tuple[str, ...]) -> None:
        """Write the checkpoint (on every rank's call; rank 0 writes) to LATEST and/or BEST."""
        rngs = all_rng_states()
        if not master:
            return
        state = {"model": raw_model.state_dict(), "model_args": asdict(raw_model.config),
                 "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step,
                 "best_val_loss": best_val, "val_loss": val_loss, "config": asdict(cfg), "rng": rngs,
                 "loader": train_loader.state_dict(prefetched=1), "tokenizer": tokenizer, "wandb_run_id": wandb_id,
                 "elapsed": elapsed_before + time.time() - t0}
        first = os.path.join(cfg.out_dir, to[0])
        save_checkpoint(state, first)
        for name in to[1:]:  # the same bytes under a second name
            publish_copy(first, os.path.join(cfg.out_dir, name))
        print0(f"saved {' and '.join(to)} in {cfg.out_dir} at step {step}")

    def record(row: dict) -> None:
        if metrics:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
        logger.log(row, step=row["step"])

    # -------------------------------------------------------------- training loop
    rngs = (ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]) if ckpt is not None else []
    if len(rngs) == world_size:
        set_rng_state(rngs[rank])
    else:  # a new run, or a resume on another number of processes: same batches, new dropout masks
        if rngs:
            set_rng_state(rngs[0])
            print0(f"resume: {len(rngs)} process(es) saved RNG states, {world_size} now: dropout masks will differ")
        if rank:
            torch.manual_seed(cfg.seed + rank + start_step)  # different dropout masks per rank
    stop = StopFlag()
    try:
        t0 = time.time()
        last_loss, val_loss = None, None
        x, y = train_loader.next_batch()
        raw_model.train()
        for step in range(start_step, cfg.max_iters + 1):
            last_step = step == cfg.max_iters
            row = {"step": step, "tokens": step * tokens_per_step}
            # evaluate at the start, every eval_interval and after the last update (a resumed run re-evaluates
            # its first step: the same number as before the stop, a check that the model came back intact)
            resumed_val = ckpt.get("val_loss") if ckpt is not None and step == start_step else None
            if step % cfg.eval_interval == 0 or last_step or resumed_val is not None:
                val_loss = evaluate()
                row["val_loss"] = val_loss
                print0(f"step {step}: val loss {val_loss:.4f}" +
                       (f" (before the stop: {resumed_val:.4f})" if resumed_val is not None else ""))
                is_best = val_loss < best_val
                best_val = min(best_val, val_loss)
                if step > start_step:
                    latest = (LATEST,) if cfg.always_save_checkpoint or last_step else ()
                    if latest or is_best:
                        save(step, val_loss, latest + ((BEST,) if is_best else ()))
            if last_step:
                row["elapsed"] = elapsed_before + time.time() - t0
                record(row)
                break

            # ---- one optimizer update: accum_steps micro-batches, then clip, step
            t_step = time.time()
            lr = get_lr(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(accum_steps):
                sync = not ddp or micro == accum_steps - 1  # all-reduce gradients on the last micro-step only
                with (nullcontext() if sync else model.no_sync()), amp:
                    _, loss = model(x, y)
                x, y = train_loader.next_batch()  # prefetch the next batch while the GPU works
                scaler.scale(loss / accum_steps).backward()
                loss_sum += loss.detach()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip or float("inf"))
            step_loss = all_mean(loss_sum / accum_steps).item()
            if not math.isfinite(step_loss) or (not math.isfinite(grad_norm.item()) and not scaler.is_enabled()):
                raise TrainingError(
                    f"loss is {step_loss} (grad norm {grad_norm.item()}) at step {step}: training diverged. Nothing was "
                    f"saved after the last good checkpoint in {cfg.out_dir}. Lower learning_rate, keep grad_clip=1.0, or "
                    f"use dtype=bfloat16, then rerun (or --init_from=resume from the last checkpoint)")
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.time() - t_step
            last_loss = step_loss

            if step % cfg.log_interval == 0:
                tok_s = tokens_per_step / dt
                mfu = flops_per_step / dt / (peak * 1e12 * world_size) if peak else None
                mem, mem_kind = hardware.peak_memory(device)
                row.update(loss=step_loss, lr=lr, grad_norm=grad_norm.item(), tok_per_s=tok_s, mfu=mfu,
                           elapsed=elapsed_before + time.time() - t0, peak_mem_gib=mem)
                print0(f"step {step}: loss {step_loss:.4f} | lr {lr:.3e} | grad norm {grad_norm.item():.3f} | "
                       f"{tok_s:,.0f} tok/s | MFU {f'{mfu:.1%}' if mfu is not None else 'n/a'} | "
                       f"{mem_kind} {f'{mem:.2f} GiB' if mem is not None else 'n/a'} | {dt * 1000:.0f} ms")
            if len(row) > 2:
                record(row)

            stop_now = torch.tensor([stop.signal is not None], dtype=torch.int32, device=device)
            if ddp:
                dist.all_reduce(stop_now)  # every rank stops at the same step
            if stop_now.item():
                save(step + 1, None, (LATEST,))
                print0(f"stopped after step {step + 1}; continue with --init_from=resume")
                break
    finally:
        stop.restore()
        if metrics:
            metrics.close()
        logger.finish()
        if ddp:
            dist.destroy_process_group()
    return {"step": step, "loss": last_loss, "val_loss": val_loss, "best_val_loss": best_val}


def main(argv: list[str] | None = None) -> None:
    cfg = cli(TrainConfig, "train.py", argv)
    try:
        train(cfg)
    except (ConfigError, ShardError, CheckpointError, TrainingError, ValueError) as e:
        sys.exit(f"train.py: error: {e}")
    except torch._dynamo.exc.BackendCompilerFailed as e:  # no C compiler, a triton that does not fit the GPU, ...
        sys.exit(f"train.py: error: torch.compile could not build the model on this machine "
                 f"({str(e).strip().splitlines()[0][:300]}); run again with --compile=False")
    except OSError as e:  # a full disk or an unwritable out_dir while saving, ...
        sys.exit(f"train.py: error: {e}\nA checkpoint already in out_dir is intact (every save is atomic): fix that, "
                 f"then continue with --init_from=resume")


if __name__ == "__main__":
    main()
