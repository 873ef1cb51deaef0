"""Training throughput of a config: tokens/s, MFU and peak memory after warm-up.

    python bench.py config/train_fineweb.py --compile=False
    python bench.py config/train_tiny.py --device=cpu

Runs full optimizer steps (forward, backward, clip, the config's optimizer) on random tokens held on the device, so
the number is the model's speed, not the disk's (bench the loader with bench/prepare.py).
Each step uses bench_micro_steps micro-batches of the config's batch_size x block_size.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from fineweb_gpt import autobatch
from fineweb_gpt import hardware
from fineweb_gpt.activation_checkpointing import apply_activation_checkpointing
from configurator import ConfigError, key, run_main
from model import GPT
from fineweb_gpt.optimizer import make_optimizer
# the training config keys (so config/*.py files read unchanged), and the attention check its models pass too
from train import TrainConfig, check_flex_attention, model_config, optimizer_settings


@dataclass
class BenchConfig(TrainConfig):
    warmup_steps: int = key(3, "untimed steps first (compile, allocator, caches)", range="[0, inf)")
    timed_steps: int = key(10, "steps to time", range="[1, inf)")
    bench_micro_steps: int = key(1, "micro-batches per timed optimizer step", range="[1, inf)")


def bench(cfg: BenchConfig) -> dict:
    device, device_reason = hardware.pick_device(cfg.device)
    hardware.print_warning(device_reason)
    dtype, dtype_reason = hardware.pick_dtype(cfg.dtype, device)
    use_compile, compile_reason = hardware.pick_compile(cfg.compile, device)
    torch.manual_seed(cfg.seed)
    model = GPT(model_config(cfg)).to(device)
    check_flex_attention(model, dtype, device)  # document or window masks: dense ones where FlexAttention fails
    optimizer, _ = make_optimizer(model, optimizer_settings(cfg))
    chunked = model.set_chunked_loss(cfg.chunked_loss)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=(dtype == "float16"))
    amp = hardware.autocast(device, dtype)
    step_model = torch.compile(model) if use_compile else model
    if cfg.batch_size == "auto":  # as train.py picks it for one process, probing the model that will run
        if cfg.total_batch_size < cfg.block_size:
            raise ConfigError("batch_size=auto picks a divisor of total_batch_size/block_size: set total_batch_size")
        cfg.batch_size, how = autobatch.choose_batch_size(step_model, optimizer, amp, device, cfg.block_size,
                                                          cfg.total_batch_size // cfg.block_size)
        print(f"batch_size=auto: {how}")
    x = torch.randint(0, min(cfg.vocab_size, 50257), (cfg.batch_size, cfg.block_size + 1), device=device)
    inputs, targets = x[:, :-1], x[:, 1:]

    def step():
        for _ in range(cfg.bench_micro_steps):
            with amp:
                _, loss = step_model(inputs, targets)
            scaler.scale(loss / cfg.bench_micro_steps).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    t = time.time()
    for _ in range(cfg.warmup_steps):
        step()
    hardware.synchronize(device)
    warmup_s = time.time() - t
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    for _ in range(cfg.timed_steps):
        step()
    hardware.synchronize(device)
    dt = (time.time() - t) / cfg.timed_steps
    tokens = cfg.batch_size * cfg.block_size * cfg.bench_micro_steps
    name = hardware.device_name(device)
    mfu = hardware.mfu(model.flops_per_token(cfg.block_size) * tokens / dt, device, cfg.peak_tflops)
    mem, mem_kind = hardware.peak_memory(device)
    result = {"device": name, "dtype": dtype, "compile": use_compile, "params_M": model.num_params()["total"] / 1e6,
              "batch": f"{cfg.batch_size}x{cfg.block_size}x{cfg.bench_micro_steps}", "ms_per_step": dt * 1000,
              "tok_per_s": tokens / dt, "mfu": mfu, f"peak_{mem_kind}_gib": mem, "warmup_s": warmup_s,
              "optimizer": cfg.optimizer, "threads": torch.get_num_threads(), "chunked_loss": chunked,
              "activation_checkpointing": cfg.activation_checkpointing}
    print(f"{name} | {dtype} ({dtype_reason}) | {compile_reason} | {result['params_M']:.1f}M params | "
          f"batch {result['batch']} | {dt * 1000:.1f} ms/step | {tokens / dt:,.0f} tok/s | "
          f"MFU {f'{mfu:.1%}' if mfu is not None else 'n/a'} | peak {mem_kind} "
          f"{f'{mem:.2f} GiB' if mem is not None else 'n/a'} | warm-up {warmup_s:.1f}s")
    return result


def main(argv: list[str] | None = None) -> None:
    run_main(BenchConfig, "bench.py", bench, argv)


if __name__ == "__main__":
    main()
