"""What the machine is and can do: device, dtype, compile support, peak FLOPS and MFU, memory.

Decided once at start-up by the scripts, each choice printed with its reason.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from contextlib import nullcontext

import torch

from fineweb_gpt.errors import UserError

# Dense (no sparsity) bf16 tensor-core peak in TFLOPS, from NVIDIA's datasheets and architecture
# whitepapers. GeForce cards are listed at their FP32-accumulate rate, which is what bf16 training
# uses and half their FP16-accumulate figure. Patterns are matched against torch's device name;
# anything unlisted (laptop variants, Ti/SUPER cards, CPUs) reports MFU as n/a, never a guess.
PEAK_BF16_TFLOPS = [
    (r"H200", 989.4),
    (r"H100.*PCIe", 756.5),
    (r"H100.*NVL", 835.5),                 # dense: half the 1,671 sparse figure recalled from NVIDIA's datasheet, not checked here
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


class DeviceError(UserError):
    """The device or dtype asked for is not available on this machine."""


def pick_device(requested: str) -> tuple[str, str]:
    """(device, reason): 'auto' takes cuda, then mps, then cpu. Choosing a CUDA device also sets the
    precision flags (set_precision_flags), so every script that picks its device here gets them."""
    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise DeviceError(f"device={requested} but torch sees no CUDA GPU (torch {torch.__version__}); "
                             f"use --device=cpu, or install a CUDA build of torch" +
                             (f". {unseen_gpu()}" if unseen_gpu() else ""))
        if requested == "mps" and not torch.backends.mps.is_available():
            raise DeviceError("device=mps but MPS is not available on this machine; use --device=cpu")
        device, reason = requested, "as requested"
    elif torch.cuda.is_available():
        device, reason = "cuda", "CUDA GPU found"
    elif torch.backends.mps.is_available():
        device, reason = "mps", "Apple GPU (MPS) found"
    else:
        device, reason = "cpu", "no GPU found"
        if unseen_gpu():
            reason = f"WARNING: {unseen_gpu()}"
    set_precision_flags(device)
    return device, reason


def print_warning(reason: str) -> None:
    """Scripts that print no device line still show pick_device's warning (a GPU left unused)."""
    if reason.startswith("WARNING"):
        print(reason, file=sys.stderr, flush=True)


def set_precision_flags(device: str) -> None:
    """fp32 matmuls and convolutions on CUDA run on tensor cores as TF32 (10-bit mantissa inputs, fp32
    accumulation): free speed on Ampere and later, and what the loss path's fp32 parts use. CPU untouched."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


CUDA_INSTALL_HINT = ("install a CUDA build of torch: pip install torch --index-url "
                     "https://download.pytorch.org/whl/cu<version> with the CUDA version for your driver that "
                     "https://pytorch.org/get-started/locally/ lists")


@functools.lru_cache(maxsize=1)
def unseen_gpu() -> str | None:
    """Why an NVIDIA GPU that nvidia-smi lists is not used, or None (no such GPU, or torch uses it).

    The default torch wheel on Windows (and `pip install torch` with a CPU index) has no CUDA: device=auto
    then trains on the CPU, hundreds of times slower, unless someone says so."""
    if torch.cuda.is_available() or not shutil.which("nvidia-smi"):
        return None
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = [line.split(" (UUID")[0] for line in listed.splitlines() if line.startswith("GPU ")]
    if not gpus:
        return None
    if torch.version.cuda is None:
        return (f"nvidia-smi lists {gpus[0]} but this torch ({torch.__version__}) is a CPU-only build, so it "
                f"runs on the CPU; {CUDA_INSTALL_HINT}")
    return (f"nvidia-smi lists {gpus[0]} but torch (built for CUDA {torch.version.cuda}) cannot use it, so it "
            f"runs on the CPU: the NVIDIA driver may be older than that CUDA version (see nvidia-smi), or "
            f"CUDA_VISIBLE_DEVICES hides it")


def cuda_capability(device: str) -> tuple[int, int]:
    """(major, minor) compute capability of the chosen GPU (not of whichever is current)."""
    return torch.cuda.get_device_capability(torch.device(device))


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


# x86: AVX512-BF16 (Cooper Lake, Sapphire Rapids, Zen 4 and later) or AMX-BF16; Arm: the BF16 extension.
# Without them oneDNN emulates bf16 matmuls through fp32 conversions: slower than fp32 itself.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def native_bf16(device: str) -> bool:
    """Whether the device computes bf16 matmuls in hardware. CUDA: compute capability 8.0 or later
    (Ampere); torch.cuda.is_bf16_supported() also counts emulation on older GPUs (T4, V100, RTX 20xx)
    and asks about the current GPU, not the chosen one. CPU: the instruction set extensions above."""
    if device.startswith("cuda"):
        return cuda_capability(device) >= (8, 0)
    if device == "cpu":
        return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)
    return False


def describe_cpu_bf16() -> str:
    """One line for benchmark output: torch's CPU capability and whether bf16 is native."""
    return (f"CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 "
            f"{'native' if native_bf16('cpu') else 'emulated (no avx512_bf16/amx_bf16)'}")


DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_dtype(requested: str, device: str) -> tuple[str, str]:
    """(dtype name, reason). 'auto': bf16 where the GPU computes it natively (compute capability 8.0+), else
    fp16 with the GradScaler; fp32 on CPU and MPS."""
    if requested not in DTYPES:  # the config keys check this too; here for callers from code
        raise ValueError(f"dtype must be one of {DTYPES}, got {requested!r}")
    cuda = device.startswith("cuda")
    if requested == "bfloat16" and cuda and not native_bf16(device):
        major, minor = cuda_capability(device)
        return requested, (f"as requested, though {device_name(device)} (compute capability {major}.{minor}) "
                           f"emulates bf16, slowly: --dtype=auto picks float16 with loss scaling")
    if requested != "auto":
        return requested, "as requested"
    if cuda:
        major, minor = cuda_capability(device)
        if native_bf16(device):
            return "bfloat16", f"compute capability {major}.{minor} computes bf16 natively"
        return "float16", (f"compute capability {major}.{minor} has no native bf16 (before Ampere's 8.0): fp16 "
                           f"autocast with the GradScaler")
    return "float32", f"full precision on {device.split(':')[0]} (--dtype=bfloat16 for bf16 autocast)"


MUON_NS_DTYPES = ("auto", "bfloat16", "float32")


def pick_newton_schulz_dtype(requested: str, device: str) -> tuple[torch.dtype, str]:
    """(dtype, reason) of Muon's Newton-Schulz iteration: bf16 where the device computes it natively
    (as Muon's authors run it on GPUs), fp32 elsewhere, where emulated bf16 is slower than fp32."""
    if requested not in MUON_NS_DTYPES:
        raise ValueError(f"muon_ns_dtype must be one of {MUON_NS_DTYPES}, got {requested!r}")
    if requested != "auto":
        return getattr(torch, requested), "as requested"
    if native_bf16(device):
        return torch.bfloat16, f"{device.split(':')[0]} computes bf16 natively"
    return torch.float32, f"{device.split(':')[0]} has no native bf16 (emulated bf16 is slower than fp32)"


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
