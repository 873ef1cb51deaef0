"""GPT-2, faithful by default, so OpenAI / Hugging Face GPT-2 weights map onto it 1:1.

Architecture (Radford et al. 2019): learned token + position embeddings, pre-LayerNorm blocks of
causal self-attention and a GELU MLP (4x), a final LayerNorm, and an output head tied to the token
embedding. Attention runs through torch's scaled_dot_product_attention (flash kernels on GPU).
Initialisation: N(0, 0.02), with residual projections scaled by 1/sqrt(2 * n_layer) (GPT-2 paper).
Names follow GPT-2 (wte, wpe, h, ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f).

Attention can write into a preallocated KV cache (KVCache) so that generation (generation.py) feeds
one new token per step. GPT-2 / Hugging Face weight conversion lives in hf_interop.py. This file
depends on torch alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2

    def __post_init__(self):
        problems = []
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not problems and self.n_embd % self.n_head:
            problems.append(self._head_mismatch())
        if problems:
            raise ValueError("invalid model config:\n  " + "\n  ".join(problems))

    def _head_mismatch(self) -> str:
        """Explain n_embd % n_head != 0 with the nearest valid choices and their sizes."""
        step = self.n_head * 8  # head sizes that are multiples of 8 suit the GPU attention kernels
        lo, hi = (self.n_embd // step) * step, (self.n_embd // step + 1) * step
        embds = [e for e in (lo, hi) if e > 0]
        lower = [h for h in range(self.n_head - 1, 0, -1) if self.n_embd % h == 0][:1]
        higher = [h for h in range(self.n_head + 1, self.n_embd + 1) if self.n_embd % h == 0][:1]
        heads = lower + higher

        def size(n_embd: int, n_head: int) -> str:
            return f"{count_params(replace(self, n_embd=n_embd, n_head=n_head))['total'] / 1e6:.1f}M params"
        opts = [f"n_embd={e} ({size(e, self.n_head)})" for e in embds] + \
               [f"n_head={h} ({size(self.n_embd, h)})" for h in heads]
        return (f"n_embd={self.n_embd} is not divisible by n_head={self.n_head} (head size would be "
                f"{self.n_embd / self.n_head:.2f}). Nearest valid: " + ", ".join(opts) + ".")


def count_params(config: GPTConfig) -> dict[str, int]:
    """GPT(config).num_params() without allocating or initialising anything: built on the meta device."""
    with torch.device("meta"):
        return GPT(config).num_params()


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        dropout = self.dropout if self.training else 0.0
        if cache is None or cache.pos == 0:
            # training, or a cache's first chunk (prefill): plain causal attention over these T tokens
            if cache is not None:
                cache.write(k, v)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            start = cache.pos
            k, v = cache.write(k, v)  # (B, nh, start+T, hs): everything seen so far
            if T == 1:
                y = F.scaled_dot_product_attention(q, k, v)  # one new token may look at all of them
            else:  # query i sits at absolute position start+i and may see keys 0..start+i
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class LayerCache:
    """Preallocated keys and values of one layer; `pos` tokens are filled."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v, self.pos = k, v, 0

    def write(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.size(2)
        self.k[:, :, self.pos:end] = k
        self.v[:, :, self.pos:end] = v
        self.pos = end
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """Keys and values for every layer, allocated once for batch_size x max_len tokens."""

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype: torch.dtype):
        if max_len > config.block_size:
            raise ValueError(f"cache length {max_len} exceeds block_size {config.block_size}")
        shape = (batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        self.layers = [LayerCache(torch.empty(shape, device=device, dtype=dtype),
                                  torch.empty(shape, device=device, dtype=dtype)) for _ in range(config.n_layer)]

    @property
    def pos(self) -> int:
        return self.layers[0].pos


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying (Press & Wolf 2017), as GPT-2
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Every parameter's initial value, in one place (GPT-2 paper, as in OpenAI's code and nanoGPT).

        Weights N(0, 0.02); the two projections that write into the residual stream (attn.c_proj,
        mlp.c_proj) N(0, 0.02 / sqrt(2 * n_layer)), so the stream's variance does not grow with depth
        (GPT-2 paper, section 2.3); biases 0; LayerNorm gains 1 and shifts 0.
        """
        std, residual_std = 0.02, 0.02 / math.sqrt(2 * self.config.n_layer)
        t = self.transformer
        nn.init.normal_(t.wte.weight, std=std)  # also the output head: the weight is shared
        nn.init.normal_(t.wpe.weight, std=std)
        for block in t.h:
            for linear, weight_std in ((block.attn.c_attn, std), (block.attn.c_proj, residual_std),
                                       (block.mlp.c_fc, std), (block.mlp.c_proj, residual_std)):
                nn.init.normal_(linear.weight, std=weight_std)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
        for norm in [t.ln_f] + [ln for block in t.h for ln in (block.ln_1, block.ln_2)]:
            nn.init.ones_(norm.weight)
            if norm.bias is not None:
                nn.init.zeros_(norm.bias)

    def num_params(self) -> dict[str, int]:
        """Counted from the parameters (each once): wte (shared with lm_head), wpe, blocks (+ ln_f), total."""
        t = self.transformer
        wte, wpe = t.wte.weight.numel(), t.wpe.weight.numel()
        total = sum(p.numel() for p in self.parameters())
        return {"wte": wte, "wpe": wpe, "blocks": total - wte - wpe, "total": total}

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token at seq_len (default block_size).

        Each matmul weight costs 6 FLOPs per token (2 forward, 4 backward); embedding lookups, biases
        and norms are not matmuls. Attention scores and their weighted sum add 12 * n_layer * n_embd *
        seq_len, counted without the causal half (PaLM paper, appendix B)."""
        c = self.config
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * matmul + 12 * c.n_layer * c.n_embd * (seq_len or c.block_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, last_only: bool = False):
        """Logits (B, T, vocab) and the mean cross-entropy if targets are given (-1 = ignore).

        With a cache, idx continues the cached sequence at position cache.pos. last_only returns
        logits for the final position only (B, 1, vocab), which is all sampling needs.
        """
        B, T = idx.size()
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache.layers[i] if cache is not None else None)
        x = self.transformer.ln_f(x)
        if last_only:
            x = x[:, -1:, :]
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss
