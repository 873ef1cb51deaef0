"""What the machine is and can do: device, dtype, compile support, peak FLOPS and MFU, memory.

Decided once at start-up by the scripts, each choice printed with its reason.
"""
from __future__ import annotations

import re
import sys
from contextlib import nullcontext

import torch

# Dense (no sparsity) bf16 tensor-core peak in TFLOPS, from NVIDIA's datasheets and architecture
# whitepapers. GeForce cards are listed at their FP32-accumulate rate, which is what bf16 training
# uses and half their FP16-accumulate figure. Patterns are matched against torch's device name;
# anything unlisted (laptop variants, Ti/SUPER cards, CPUs) reports MFU as n/a, never a guess.
PEAK_BF16_TFLOPS = [
    (r"H200", 989.4),
    (r"H100.*PCIe", 756.5),
    (r"H100", 989.4),                      # SXM
    (r"A100", 312.0),                      # SXM and PCIe
    (r"\bA10$", 125.0),
    (r"\bL4$", 121.0),
    (r"RTX 3090$", 71.0),
    (r"RTX 4070$", 58.3),                  # 46 SMs x 2.475 GHz x 512 bf16 FLOP/clk/SM (FP32 accumulate)
    (r"RTX 4080$", 97.5),
    (r"RTX 4090$", 165.2),
    (r"RTX 5090$", 209.5),
]


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by its torch name, or None when unknown."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name.strip()):
            return tflops
    return None


def mfu(flops_per_s: float, device: str, override_tflops: float = 0.0, world_size: int = 1) -> float | None:
    """Model FLOPs utilisation: achieved FLOPs over the devices' dense bf16 peak (None when unknown).

    The peak is override_tflops when given, else looked up for CUDA GPUs; CPUs and MPS have no entry."""
    peak = override_tflops or (peak_tflops(device_name(device)) if device.startswith("cuda") else None)
    return flops_per_s / (peak * 1e12 * world_size) if peak else None


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so a wall-clock time measures it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return device


def pick_device(requested: str) -> tuple[str, str]:
    """(device, reason): 'auto' takes cuda, then mps, then cpu."""
    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={requested} but torch sees no CUDA GPU (torch {torch.__version__}); "
                             f"use --device=cpu, or install a CUDA build of torch")
        if requested == "mps" and not torch.backends.mps.is_available():
            raise ValueError("device=mps but MPS is not available on this machine; use --device=cpu")
        return requested, "as requested"
    if torch.cuda.is_available():
        return "cuda", "CUDA GPU found"
    if torch.backends.mps.is_available():
        return "mps", "Apple GPU (MPS) found"
    return "cpu", "no GPU found"


DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_dtype(requested: str, device: str) -> tuple[str, str]:
    """(dtype name, reason). 'auto': bf16 where the GPU supports it, else fp16 (+GradScaler), fp32 on CPU/MPS."""
    if requested not in DTYPES:  # the config keys check this too; here for callers from code
        raise ValueError(f"dtype must be one of {DTYPES}, got {requested!r}")
    cuda = device.startswith("cuda")
    if requested == "bfloat16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{device_name(device)} has no bfloat16 support; use --dtype=float16 (with loss "
                         f"scaling) or --dtype=float32")
    if requested != "auto":
        return requested, "as requested"
    if cuda:
        if torch.cuda.is_bf16_supported():
            return "bfloat16", "GPU supports bf16"
        return "float16", "GPU lacks bf16 (pre-Ampere): fp16 autocast with GradScaler"
    return "float32", f"full precision on {device.split(':')[0]} (--dtype=bfloat16 for bf16 autocast)"


def autocast(device: str, dtype: str):
    """Mixed-precision context for forward passes; a no-op for float32."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))


def pick_compile(requested: bool | None, device: str) -> tuple[bool, str]:
    """(compile?, reason). None = auto: on for CUDA where triton and the platform allow it."""
    if requested is False:
        return False, "compile=False"
    problem = None
    if sys.platform == "win32":
        problem = "torch.compile's inductor backend does not support Windows"
    elif device.startswith("cuda"):
        try:
            from torch.utils._triton import has_triton
            if not has_triton():
                problem = "triton is not installed (pip install triton)"
        except ImportError:
            problem = "this torch build cannot tell whether triton works"
    elif device == "mps":
        problem = "torch.compile does not support MPS training well"
    elif requested is None:
        return False, f"auto: compile is used on CUDA; running eager on {device} (--compile=True forces it)"
    if problem:
        if requested:
            print(f"warning: compile requested but {problem}; running eager")
        return False, f"eager: {problem}"
    return True, "torch.compile (inductor)"


def peak_memory(device: str) -> tuple[float | None, str]:
    """(GiB, kind): CUDA's peak allocated memory, else the process's peak resident set size."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**30, "alloc"
    try:
        import resource
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (2**30 if sys.platform == "darwin" else 2**20), "rss"  # bytes on macOS, KiB on Linux
    except ImportError:  # Windows
        return None, "rss"
