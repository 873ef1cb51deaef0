"""Sample text from a trained model (or OpenAI's GPT-2) with a KV cache, streamed as it is made.

    python sample.py --out_dir=out-fineweb --start="The meaning of life" --num_samples=5 --max_new_tokens=500
    python sample.py --init_from=gpt2 --start=FILE:prompt.txt --top_p=0.9 --temperature=0.8

All num_samples are generated together in one batch; the first is streamed to the terminal while it
is produced and the others are printed when the batch finishes. Prompt + max_new_tokens must fit in
the model's block_size: max_new_tokens is lowered to fit, with a message (the context does not slide).
"""
from __future__ import annotations

import codecs
import os
import sys
import time
from dataclasses import dataclass

import torch

from fineweb_gpt import hardware
from fineweb_gpt import report
from fineweb_gpt import tokenizer
from configurator import check_values, key, run_main
from fineweb_gpt.errors import UserError
from fineweb_gpt.generation import generate
from fineweb_gpt.hf_interop import GPT2_MODELS
from fineweb_gpt.inference import load_for_inference


@dataclass
class SampleConfig:
    out_dir: str = key("out-fineweb", "run directory to load a checkpoint from")
    ckpt: str = key("latest", "'latest' (ckpt.pt), 'best' (ckpt_best.pt) or a checkpoint file path")
    init_from: str = key("resume", "'resume' (a checkpoint from out_dir) or gpt2, gpt2-medium, gpt2-large, gpt2-xl",
                         choices=("resume", *GPT2_MODELS))
    start: str = key("\n", "the prompt, or FILE:path to read it from a file")
    num_samples: int = key(5, "samples, generated together in one batch", range="[1, inf)")
    max_new_tokens: int = key(256, "tokens to generate per sample (lowered to fit block_size)", range="[1, inf)")
    temperature: float = key(0.8, "softmax temperature; 0 = greedy", range="[0, inf)")
    top_k: int = key(200, "sample from the k most likely tokens only (0 = off)", range="[0, inf)")
    top_p: float = key(1.0, "nucleus sampling: the smallest set of tokens with this much probability (1 = off)",
                       range="(0, 1]")
    seed: int = key(1337, "same seed, same text", range="[0, inf)")
    device: str = key("auto", "'auto', 'cpu', 'cuda', 'cuda:1', 'mps'")
    dtype: str = key("auto", "'auto' (bf16/fp16 on GPU, fp32 on CPU), 'float32', 'bfloat16', 'float16'",
                     choices=hardware.DTYPES)
    compile: bool = key(False, "torch.compile the model for decoding (CUDA)")
    kv_cache: bool = key(True, "reuse keys/values of earlier tokens (False recomputes the whole context each step)")
    stop_at_eot: bool = key(True, "end a sample at the end-of-text token")
    stream: bool = key(True, "print the first sample token by token as it is produced")


class PromptError(UserError):
    """The prompt cannot be read, or does not fit the model."""


def read_prompt(start: str) -> str:
    """The prompt text: --start itself, or the UTF-8 file that FILE:path names."""
    if not start.startswith("FILE:"):
        try:
            start.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes from the shell arrive as lone surrogates
            raise PromptError("--start is not valid UTF-8 text (check your terminal's encoding, or put the prompt in "
                              "a UTF-8 file and pass --start=FILE:path)") from None
        return start
    path = os.path.expanduser(start[5:])
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise PromptError(f"cannot read the prompt file {path}: {e.strerror}") from None
    try:
        return raw.decode("utf-8-sig")  # a UTF-8 byte-order mark, as some editors write, is not part of the prompt
    except UnicodeDecodeError as e:
        raise PromptError(f"the prompt file {path} is not UTF-8 text (byte {e.start} is {raw[e.start:e.start + 1]!r}); "
                          f"save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > prompt-utf8.txt") from None


def sample(cfg: SampleConfig, out=sys.stdout) -> list[str]:
    """Generate cfg.num_samples continuations of the prompt; returns their texts."""
    check_values(cfg)
    device, device_reason = hardware.pick_device(cfg.device)
    hardware.print_warning(device_reason)
    dtype, _ = hardware.pick_dtype(cfg.dtype, device)
    loaded = load_for_inference(cfg.out_dir, cfg.ckpt, cfg.init_from)
    model = loaded.model.to(device=device, dtype=getattr(torch, dtype))
    for module in model.modules():  # RMSNorm computes in fp32: an fp32 gain keeps torch's fused kernel
        if isinstance(module, torch.nn.RMSNorm):
            module.float()
    enc = tokenizer.load_encoding(loaded.tokenizer["name"])
    ids = enc.encode(read_prompt(cfg.start), allowed_special={"<|endoftext|>"})
    block = model.config.block_size
    if not ids:
        ids = [enc.eot_token]  # an empty prompt starts a fresh document
    if len(ids) >= block:
        raise PromptError(f"the prompt is {len(ids)} tokens; the model's context (block_size) is {block}. Shorten it")
    max_new = cfg.max_new_tokens
    if len(ids) + max_new > block:
        max_new = block - len(ids)
        print(f"note: max_new_tokens lowered from {cfg.max_new_tokens} to {max_new}: prompt ({len(ids)}) + new "
              f"tokens must fit block_size {block}", file=sys.stderr)
    if cfg.compile and device.startswith("cuda"):
        model = torch.compile(model, dynamic=True)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    x = torch.tensor([ids] * cfg.num_samples, dtype=torch.long, device=device)
    rows: list[list[int]] = [[] for _ in range(cfg.num_samples)]
    live = codecs.getincrementaldecoder("utf-8")(errors="replace")  # tokens can split UTF-8 characters
    eot = enc.eot_token if cfg.stop_at_eot else None
    if cfg.stream:
        out.write(f"---------- sample 1 of {cfg.num_samples}\n{enc.decode(ids)}")
    t0, n = time.time(), 0
    finished = [False] * cfg.num_samples
    for nxt in generate(model, x, max_new, cfg.temperature, cfg.top_k or None, cfg.top_p, eot, g, cfg.kv_cache):
        n += 1
        for r, t in enumerate(nxt[:, 0].tolist()):
            if finished[r]:
                continue
            if eot is not None and t == eot:
                finished[r] = True
                continue
            rows[r].append(t)
            if r == 0 and cfg.stream:
                out.write(live.decode(enc.decode_single_token_bytes(t)))
                out.flush()
    texts = [enc.decode(ids + r) for r in rows]
    dt = time.time() - t0
    for i, text in enumerate(texts):
        if i == 0 and cfg.stream:
            out.write(live.decode(b"", final=True) + "\n")
            continue
        out.write(f"---------- sample {i + 1} of {cfg.num_samples}\n{text}\n")
    print(f"[{report.plural(n, 'step')} x {report.plural(cfg.num_samples, 'sample')} in {dt:.2f}s = {n * cfg.num_samples / max(dt, 1e-9):,.0f} tokens/s, "
          f"kv_cache={cfg.kv_cache}, {device}]", file=sys.stderr)
    return texts


def main(argv: list[str] | None = None) -> None:
    run_main(SampleConfig, "sample.py", sample, argv)


if __name__ == "__main__":
    main()
