"""Peak memory and speed of a CPU training step: plain loss, chunked loss, chunked loss + activation
checkpointing, and nanoGPT's model at the same shape as the reference.

    python bench/memory.py --nanogpt_dir=../nanoGPT                        # 4 layers x 256, T=256, B=16
    python bench/memory.py --nanogpt_dir=../nanoGPT --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 \
        --batch_size=4 --warmup_steps=1 --steps=2                          # GPT-2 small's shape
    python bench/memory.py --mode=loss --n_embd=768 --loss_chunk_rows=512  # the loss alone: 4,096 x 768 x 50,304
    python bench/memory.py --mode=loss --n_embd=768 --logit_softcap=15     # softcapped: plain vs our chunks
    python bench/memory.py --mode=compile                                  # what the chunked op's graph break costs

Each variant runs in its own process, so its peak resident set size (VmHWM) is its own. A step is what
train.py does: forward, backward, gradient clipping and the optimizer step (our fused AdamW; nanoGPT's
configure_optimizers, as its train.py calls it), in fp32 on random tokens. tokens/s is measured over
`steps` steps after `warmup_steps`; with repeats > 1 the variants run round-robin and each reports its
median speed and largest peak, so a change in machine load touches every variant alike.

nanoGPT's model.py is loaded from --nanogpt_dir at run time (git clone https://github.com/karpathy/nanoGPT).
"""
from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root, when run as bench/memory.py

import torch
import torch.nn.functional as F

from fineweb_gpt.activation_checkpointing import apply_activation_checkpointing
from configurator import ConfigError, key, run_main
import model as model_module
from model import GPT, LOSS_CHUNK_ROWS, GPTConfig, SoftCap, softcapped_cross_entropy
from fineweb_gpt.optimizer import OptimizerSettings, make_optimizer

MODES = {  # the variants each mode compares, in table order
    "step": ("plain", "chunked", "chunked+ckpt", "nanogpt"),
    "loss": ("loss-plain", "loss-chunked", "loss-softcap-chunked"),
    "compile": ("plain", "chunked", "plain+compile", "chunked+compile"),
}
RESULT = "bench_memory result: "  # the line a variant's process reports on


@dataclass
class MemoryBenchConfig:
    mode: str = key("step", "'step': a training step per variant; 'loss': the head + cross-entropy alone; "
                    "'compile': plain and chunked loss, eager and torch.compile", choices=tuple(MODES))
    variants: str = key("", "comma-separated subset of the mode's variants ('' = all): plain, chunked, chunked+ckpt, "
                        "nanogpt; loss-plain, loss-chunked, loss-softcap-chunked; plain+compile, chunked+compile")
    nanogpt_dir: str = key("", "a nanoGPT checkout whose model.py is the reference ('' = leave it out)")
    n_layer: int = key(4, "transformer blocks", range="[1, inf)")
    n_head: int = key(4, "attention heads", range="[1, inf)")
    n_embd: int = key(256, "embedding width", range="[1, inf)")
    block_size: int = key(256, "sequence length T", range="[1, inf)")
    batch_size: int = key(16, "sequences per step B", range="[1, inf)")
    vocab_size: int = key(50304, "vocabulary (GPT-2's, padded)", range="[1, inf)")
    loss_rows: int = key(4096, "mode=loss: positions (rows of hidden states)", range="[1, inf)")
    loss_chunk_rows: int = key(0, "mode=loss: rows per chunk (0 = the training loss's, model.LOSS_CHUNK_ROWS)",
                               range="[0, inf)")
    logit_softcap: float = key(0.0, "mode=loss: a logit softcap c (0 = off): loss-plain applies it to the full logits, "
                               "loss-softcap-chunked (needs one) in chunks; loss-chunked (torch's op) never does",
                               range="[0, inf)")
    warmup_steps: int = key(2, "untimed steps first", range="[0, inf)")
    steps: int = key(5, "timed steps", range="[1, inf)")
    repeats: int = key(1, "round-robin repeats of every variant (median speed, largest peak)", range="[1, inf)")
    threads: int = key(2, "torch CPU threads in each variant's process", range="[1, inf)")
    seed: int = key(1337, "seed of the model and the tokens", range="[0, inf)")
    variant: str = key("", "internal: run this one variant in this process and print its result")


# ------------------------------------------------------------------ one variant, in its own process

def peak_rss_gb() -> float:
    """This process's peak resident set size: VmHWM (Linux), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9  # bytes on macOS, KiB on Linux


def load_nanogpt(directory: str):
    """nanoGPT's model module, imported from its checkout (never copied into this project)."""
    path = os.path.join(directory, "model.py")
    if not os.path.isfile(path):
        raise ConfigError(f"--nanogpt_dir={directory} holds no model.py; pass a nanoGPT checkout "
                          f"(git clone https://github.com/karpathy/nanoGPT)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(cfg: MemoryBenchConfig, variant: str):
    """(model, optimizer, optimizer's name) of a variant, GPT-2's architecture at cfg's shape."""
    shape = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                 vocab_size=cfg.vocab_size, dropout=0.0, bias=True)
    if variant == "nanogpt":
        nanogpt = load_nanogpt(cfg.nanogpt_dir)
        model = nanogpt.GPT(nanogpt.GPTConfig(**shape))
        optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cpu")  # as nanoGPT's train.py
        return model.train(), optimizer, f"nanoGPT's AdamW ({adamw_kind(optimizer)})"
    model = GPT(GPTConfig(**shape)).train()
    model.set_chunked_loss(variant.startswith("chunked"))
    if "+ckpt" in variant:
        apply_activation_checkpointing(model)
    optimizer, _ = make_optimizer(model, OptimizerSettings("adamw", 6e-4, 0.1, (0.9, 0.95)))
    return model, optimizer, f"AdamW ({adamw_kind(optimizer)})"


def adamw_kind(optimizer) -> str:
    """fused, foreach, or torch's default implementation for the device (foreach=None)."""
    d = optimizer.defaults
    return "fused" if d.get("fused") else "foreach" if d.get("foreach") else "torch's default"


def run_steps(cfg: MemoryBenchConfig, variant: str) -> dict:
    model, optimizer, optimizer_name = build(cfg, variant)
    step_model = torch.compile(model) if variant.endswith("+compile") else model
    tokens = torch.randint(cfg.vocab_size, (cfg.batch_size, cfg.block_size + 1))
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # (B, T) each, as a loader hands them over

    def step() -> float:
        _, loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return {**timed(step, cfg, cfg.batch_size * cfg.block_size), "optimizer": optimizer_name}


def timed(run, cfg: MemoryBenchConfig, tokens: int) -> dict:
    """run() warmup_steps times untimed, then steps times: tokens/s and ms per call (each call processing
    `tokens`), the warm-up's seconds, the last loss."""
    t = time.perf_counter()
    for _ in range(cfg.warmup_steps):
        run()
    warmup_s = time.perf_counter() - t
    t = time.perf_counter()
    losses = [run() for _ in range(cfg.steps)]
    dt = (time.perf_counter() - t) / cfg.steps
    return {"tok_per_s": tokens / dt, "ms": dt * 1000, "loss": losses[-1], "warmup_s": warmup_s}


def run_loss(cfg: MemoryBenchConfig, variant: str) -> dict:
    """The head matmul (+ softcap) + cross-entropy, forward and backward, at loss_rows x n_embd x vocab_size."""
    x = torch.randn(cfg.loss_rows, cfg.n_embd, requires_grad=True)                    # (N, C)
    w = (0.02 * torch.randn(cfg.vocab_size, cfg.n_embd)).requires_grad_()              # (V, C)
    targets = torch.randint(cfg.vocab_size, (cfg.loss_rows,))
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=cfg.loss_chunk_rows or LOSS_CHUNK_ROWS,
                                                 chunking_method=None)
    model_module.LOSS_CHUNK_ROWS = cfg.loss_chunk_rows or LOSS_CHUNK_ROWS  # our softcapped chunks: the same rows
    softcap = SoftCap(cfg.logit_softcap) if cfg.logit_softcap else torch.nn.Identity()

    def forward_backward() -> float:
        if variant == "loss-plain":
            loss = F.cross_entropy(softcap(x @ w.t()), targets)  # the (N, V) logits exist whole
        elif variant == "loss-softcap-chunked":
            loss = softcapped_cross_entropy(x, w, targets, torch.float32, cfg.logit_softcap)
        else:
            loss = F.linear_cross_entropy(x, w, targets, options=options)
        loss.backward()
        x.grad = w.grad = None
        return loss.item()

    return {**timed(forward_backward, cfg, cfg.loss_rows), "optimizer": "-"}


def run_variant(cfg: MemoryBenchConfig) -> None:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    try:
        result = (run_loss if cfg.mode == "loss" else run_steps)(cfg, cfg.variant)
    except Exception as e:  # noqa: BLE001 - a variant that cannot run (compile without a compiler) is a table row
        result = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"}
    print(RESULT + json.dumps({**result, "peak_rss_gb": peak_rss_gb()}), flush=True)


# ------------------------------------------------------------------ the parent: every variant, then the table

def chosen_variants(cfg: MemoryBenchConfig) -> list[str]:
    names = [v.strip() for v in cfg.variants.split(",") if v.strip()] or list(MODES[cfg.mode])
    unknown = [v for v in names if v not in MODES[cfg.mode]]
    if unknown:
        raise ConfigError(f"variants {unknown} are not in mode={cfg.mode}'s {', '.join(MODES[cfg.mode])}")
    if "loss-softcap-chunked" in names and not cfg.logit_softcap:
        if cfg.variants:
            raise ConfigError("variant loss-softcap-chunked needs a softcap: pass --logit_softcap=C (e.g. 15)")
        names.remove("loss-softcap-chunked")
    if "nanogpt" in names and not cfg.nanogpt_dir:
        names.remove("nanogpt")
        print("nanogpt: left out; pass --nanogpt_dir=PATH to a nanoGPT checkout "
              "(git clone https://github.com/karpathy/nanoGPT) to include its model as the reference")
    elif "nanogpt" in names:
        load_nanogpt(cfg.nanogpt_dir)  # a wrong path fails now, not after the other variants ran
    return names


def measure(argv: list[str], variant: str) -> dict:
    """One variant in a fresh process: its own peak RSS."""
    r = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, f"--variant={variant}"],
                       capture_output=True, text=True)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith(RESULT)), None)
    if line is None:  # killed (out of memory?) or crashed before reporting
        return {"error": f"exit {r.returncode}: {(r.stderr.strip().splitlines() or ['no output'])[-1][:160]}"}
    return json.loads(line[len(RESULT):])


def table(cfg: MemoryBenchConfig, results: dict[str, dict]) -> str:
    softcap = f", logit softcap {cfg.logit_softcap:g} (not in loss-chunked)" if cfg.logit_softcap else ""
    what = (f"{cfg.loss_rows:,} positions x {cfg.n_embd} x {cfg.vocab_size:,}, forward + backward{softcap}"
            if cfg.mode == "loss"
            else f"{cfg.n_layer}L/{cfg.n_embd}/T{cfg.block_size}/B{cfg.batch_size}, fp32, full training step")
    base = results.get("nanogpt") if "tok_per_s" in results.get("nanogpt", {}) else None
    plain = next((results[v] for v in ("plain", "loss-plain") if "peak_rss_gb" in results.get(v, {})), None)
    lines = [f"{what}; {cfg.threads} threads, {cfg.steps} timed steps after {cfg.warmup_steps}, {cfg.repeats} repeat(s)",
             "| variant | tokens/s | ms/step | peak RSS GB | RSS vs plain | tokens/s vs nanoGPT | loss | warm-up s | optimizer |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | | | |")
            continue
        rss_ratio = f"{r['peak_rss_gb'] / plain['peak_rss_gb']:.2f}x" if plain else "-"
        speed_ratio = f"{r['tok_per_s'] / base['tok_per_s']:.2f}x" if base else "-"
        lines.append(f"| {name} | {r['tok_per_s']:,.0f} | {r['ms']:.1f} | {r['peak_rss_gb']:.2f} | {rss_ratio} | "
                     f"{speed_ratio} | {r['loss']:.4f} | {r['warmup_s']:.1f} | {r['optimizer']} |")
    return "\n".join(lines)


def combine(runs: list[dict]) -> dict:
    """One variant's repeats: the median speed, the largest peak."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    middle = sorted(ok, key=lambda r: r["tok_per_s"])[len(ok) // 2]
    return {**middle, "peak_rss_gb": max(r["peak_rss_gb"] for r in ok)}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    run_main(MemoryBenchConfig, "bench/memory.py", lambda cfg: compare(cfg, argv), argv)


def compare(cfg: MemoryBenchConfig, argv: list[str]) -> None:
    """Every variant in its own process with argv (or, with --variant, this process is that one), then the table."""
    if cfg.variant:
        return run_variant(cfg)
    names = chosen_variants(cfg)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(cfg.repeats):
        for name in names:
            runs[name].append(measure(argv, name))
            print(f"[{repeat + 1}/{cfg.repeats}] {name}: {runs[name][-1]}", flush=True)
    print(table(cfg, {name: combine(r) for name, r in runs.items()}))


if __name__ == "__main__":
    main()
