"""batch_size=auto: the largest micro-batch that fits in GPU memory, found by trying real training steps.

The search (find_batch_size) only knows a callable that tries one size and raises out-of-memory when it
does not fit, so it runs unchanged on CPU in the tests with the condition injected at a size threshold.
On CUDA the callable runs real forward + backward + optimizer steps of the model being trained (compiled when
training compiles it), under a memory cap of the GPU's free memory less a safety margin (a desktop GPU
driving a display, or another process, holds part of it); the model, optimizer state and RNG are restored
afterwards, so the probe leaves no trace in training.

Not probed: DDP's wrapper. A rank that runs out of memory inside a collective would leave the others
waiting in it, so the ranks probe alone (Muon orthogonalises every matrix locally then, more than its share
in training) and agree on the smallest size; train.py wraps DDP with gradient_as_bucket_view=True, so its
buckets hold the gradients rather than a second copy of them.
"""
from __future__ import annotations

import bisect
import gc
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from fineweb_gpt import hardware
from fineweb_gpt.checkpoint import rng_state, set_rng_state
from fineweb_gpt.errors import UserError
from fineweb_gpt.muon import Muon

# Fraction of the GPU's total memory the probe leaves unused out of what is free: room for what a few probe
# steps do not show (allocator fragmentation over a long run, DDP's bucket bookkeeping, eval).
MARGIN = 0.10
# On CPU and MPS running out of memory means swapping or the kernel's OOM killer first, not an exception a
# probe could catch; auto takes micro-batches of at most this many tokens (4 x 1024, 16 x 256): GPT-2
# small's training step at 4 x 1024 peaked near 8 GB of RAM on CPU with the plain loss, less chunked.
FIXED_TOKENS = 4096
PROBE_STEPS = 2  # the first step allocates the optimizer state; the second runs with it, as training does


class NothingFits(UserError):
    """Not even the smallest micro-batch fits in GPU memory; the message says what to change."""


@dataclass
class Probe:
    batch_size: int | None                                      # the largest size that fitted (None: not even the smallest)
    tried: list[tuple[int, bool]] = field(default_factory=list)  # (size, fitted), in the order tried

    def describe(self) -> str:
        return ", ".join(f"{b} {'fits' if ok else 'out of memory'}" for b, ok in self.tried)


def divisors(n: int) -> list[int]:
    """The micro-batches that split n sequences into whole micro-steps, ascending."""
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def largest_at_most(candidates: list[int], limit: int) -> int:
    """The largest of the ascending candidates that is <= limit (the smallest candidate if none is)."""
    return candidates[max(0, bisect.bisect_right(candidates, limit) - 1)]


def is_out_of_memory(e: BaseException) -> bool:
    """The allocator's OutOfMemoryError, or a library (cuBLAS, cuDNN) reporting a failed allocation."""
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and any(s in str(e) for s in ("out of memory", "_STATUS_ALLOC_FAILED")))


def find_batch_size(try_batch: Callable[[int], None], candidates: list[int],
                    release: Callable[[], None] = lambda: None) -> Probe:
    """The largest of the ascending candidates for which try_batch(size) returns instead of raising an
    out-of-memory error, assuming that what fits is a prefix of the candidates.

    Doubling from the smallest (the next size is the largest candidate at most twice the last that
    fitted), then bisection between the last size that fitted and the first that did not: about
    2*log2(largest that fits) tries. release() runs after every try, to free what a failed one left.
    Any other exception propagates."""
    probe = Probe(None)

    def fits(i: int) -> bool:
        try:
            try_batch(candidates[i])
            ok = True
        except Exception as e:  # noqa: BLE001 - anything but out-of-memory is re-raised
            if not is_out_of_memory(e):
                raise
            ok = False
        release()  # after the except block: the traceback, and the tensors its frames held, are gone
        probe.tried.append((candidates[i], ok))
        return ok

    fitted, failed = -1, len(candidates)  # indices: the largest known to fit, the smallest known not to
    i = 0
    while i < failed:
        if not fits(i):
            failed = i
            break
        fitted = i
        i = max(i + 1, bisect.bisect_right(candidates, 2 * candidates[i]) - 1)
    while failed - fitted > 1:
        mid = (fitted + failed) // 2
        if fits(mid):
            fitted = mid
        else:
            failed = mid
    probe.batch_size = candidates[fitted] if fitted >= 0 else None
    return probe


def training_step(model: torch.nn.Module, optimizer, amp, block_size: int,
                  steps: int = PROBE_STEPS) -> Callable[[int], None]:
    """try_batch(size) for find_batch_size: `steps` real training updates (forward, backward, gradient
    clipping, optimizer step) on size random sequences of block_size tokens. Gradients are dropped
    however a try ends; the weights and optimizer state do change (see restored_afterwards)."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size

    def try_batch(size: int) -> None:
        tokens = torch.randint(vocab, (size, block_size + 1), generator=torch.Generator().manual_seed(size))
        tokens = tokens.to(device)  # (size, block_size + 1)
        try:
            for _ in range(steps):
                with amp:
                    _, loss = model(tokens[:, :-1], tokens[:, 1:])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            hardware.synchronize(str(device))  # a failure inside a kernel surfaces here, not in training
        finally:
            optimizer.zero_grad(set_to_none=True)

    return try_batch


def _cpu_copy(obj):
    """A deep copy of a (nested) state dict with every tensor copied to CPU memory."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


@contextmanager
def restored_afterwards(model: torch.nn.Module, optimizer) -> Iterator[None]:
    """Run the block, then put the weights, the optimizer state (empty for a new run, so its memory is
    freed) and every RNG back exactly as they were. The copies wait in CPU memory, not on the GPU."""
    weights, state, rngs = _cpu_copy(model.state_dict()), _cpu_copy(optimizer.state_dict()), rng_state()
    try:
        yield
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.load_state_dict(weights)   # copies into the same parameters, so the optimizer still holds them
        optimizer.load_state_dict(state)
        set_rng_state(rngs)


def cuda_index(device: str) -> int:
    """The GPU's index: torch's memory-fraction calls refuse a bare "cuda"."""
    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else index


def cap_fraction(free: int, total: int, held: int, margin: float) -> float:
    """The allocator's cap as a fraction of total memory: what this process holds plus what is free, less
    margin * total (at least a sliver, so that nothing fits rather than an error from torch)."""
    return max(0.01, min(1.0, (held + free - margin * total) / total))


@contextmanager
def local_optimizer_steps(optimizer) -> Iterator[None]:
    """Muon without collectives during the block (see the module docstring)."""
    muons = [o for o in getattr(optimizer, "optimizers", {"": optimizer}).values() if isinstance(o, Muon)]
    with ExitStack() as stack:
        for muon in muons:
            stack.enter_context(muon.local())
        yield


@contextmanager
def memory_cap(device: str, margin: float) -> Iterator[None]:
    """Make the CUDA allocator raise out-of-memory beyond the GPU's free memory less margin * total during
    the block."""
    index = cuda_index(device)
    before = torch.cuda.get_per_process_memory_fraction(index)
    free, total = torch.cuda.mem_get_info(index)
    fraction = cap_fraction(free, total, torch.cuda.memory_reserved(index), margin)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(before, index)


def free_cuda_memory() -> None:
    gc.collect()  # tensors kept alive only by reference cycles (a failed step's frames)
    torch.cuda.empty_cache()


def probe_cuda(model: torch.nn.Module, optimizer, amp, block_size: int, candidates: list[int], device: str,
               margin: float = MARGIN) -> Probe:
    """find_batch_size with real training steps of this model and optimizer, within the GPU's free memory
    less margin; afterwards the model, optimizer and RNG are as before and the peak-memory counter is
    reset, so the log's peak memory is training's."""
    with restored_afterwards(model, optimizer), local_optimizer_steps(optimizer), memory_cap(device, margin):
        probe = find_batch_size(training_step(model, optimizer, amp, block_size), candidates,
                                release=free_cuda_memory)
    free_cuda_memory()
    torch.cuda.reset_peak_memory_stats(cuda_index(device))
    return probe


def choose_batch_size(model: torch.nn.Module, optimizer, amp, device: str, block_size: int,
                      sequences: int) -> tuple[int, str]:
    """(micro-batch, what was done, for the log): the largest divisor of `sequences` (per update and
    process) that fits, probed on CUDA; on CPU/MPS the largest divisor holding <= FIXED_TOKENS tokens."""
    candidates = divisors(sequences)
    if not device.startswith("cuda"):
        b = largest_at_most(candidates, max(1, FIXED_TOKENS // block_size))
        return b, (f"{b} (fixed on {device.split(':')[0]}: probing needs CUDA's out-of-memory error; the largest "
                   f"divisor of the {sequences} sequences per update and process within {FIXED_TOKENS:,} tokens; "
                   f"--batch_size=N sets it)")
    probe = probe_cuda(model, optimizer, amp, block_size, candidates, device)
    if probe.batch_size is None:
        raise NothingFits(f"batch_size=auto: not even 1 sequence of {block_size} tokens trains within "
                          f"the GPU's free memory less {MARGIN:.0%} of its total; turn on --activation_checkpointing=True, "
                          f"lower block_size, or train a smaller model")
    return probe.batch_size, (f"{probe.batch_size} (tried {probe.describe()}, within the GPU's free memory less "
                              f"{MARGIN:.0%} of its total; divisors of the {sequences} sequences per update and process)")
