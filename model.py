"""GPT-2, faithful by default, so OpenAI / Hugging Face GPT-2 weights map onto it 1:1.

Architecture (Radford et al. 2019): learned token + position embeddings, pre-LayerNorm blocks of
causal self-attention and a GELU MLP (4x), a final LayerNorm, and an output head tied to the token
embedding. Attention runs through torch's scaled_dot_product_attention (flash kernels on GPU).
Initialisation: N(0, 0.02), with residual projections scaled by 1/sqrt(2 * n_layer) (GPT-2 paper).
Names follow GPT-2 (wte, wpe, h, ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f).

Generation uses a preallocated KV cache (KVCache), so producing N tokens costs O(N*T), not O(N*T^2).
This file depends on torch alone; transformers is imported only inside the GPT-2 conversion helpers.
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


def count_params(cfg: GPTConfig) -> dict[str, int]:
    """Parameter count from the config alone (matches GPT.num_params()), with a breakdown."""
    C, L, b = cfg.n_embd, cfg.n_layer, int(cfg.bias)
    ln = C + b * C
    block = 2 * ln + (C * 3 * C + b * 3 * C) + (C * C + b * C) + (C * 4 * C + b * 4 * C) + (4 * C * C + b * C)
    out = {"wte": cfg.vocab_size * C, "wpe": cfg.block_size * C, "blocks": L * block + ln}
    out["total"] = sum(out.values())
    return out


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
        self.max_len = max_len

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
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections: GPT-2's 1/sqrt(2 * n_layer) scaling
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> dict[str, int]:
        """Counted from the parameters: wte (shared with lm_head), wpe, blocks (+ ln_f), total."""
        t = self.transformer
        out = {"wte": t.wte.weight.numel(), "wpe": t.wpe.weight.numel()}
        out["total"] = sum(p.numel() for p in self.parameters())
        out["blocks"] = out["total"] - out["wte"] - out["wpe"]
        return {k: out[k] for k in ("wte", "wpe", "blocks", "total")}

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token at seq_len (default block_size): 6N for the matmuls plus attention
        (PaLM paper, appendix B)."""
        c = self.config
        n = self.num_params()["total"] - self.num_params()["wpe"]  # wte counts: it is the output matmul
        return 6 * n + 12 * c.n_layer * c.n_embd * (seq_len or c.block_size)

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

    @classmethod
    def from_pretrained(cls, model_type: str, dropout: float = 0.0) -> GPT:
        """OpenAI's GPT-2 weights (gpt2, gpt2-medium, gpt2-large, gpt2-xl) via transformers."""
        if model_type not in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
            raise ValueError(f"unknown GPT-2 model {model_type!r}: use gpt2, gpt2-medium, gpt2-large or gpt2-xl")
        from transformers import GPT2LMHeadModel
        try:
            hf_model = GPT2LMHeadModel.from_pretrained(model_type)
        except OSError as e:
            raise ValueError(f"could not load {model_type} through transformers ({str(e).splitlines()[0][:200]}); the "
                             f"weights are downloaded from Hugging Face on first use: check your connection") from None
        return from_hf(hf_model, dropout=dropout)


# Hugging Face GPT2LMHeadModel stores these as Conv1D, i.e. (in, out): transposed relative to nn.Linear.
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def from_hf(hf_model, dropout: float = 0.0) -> GPT:
    """Our GPT with the weights of a transformers GPT2LMHeadModel (the names map 1:1)."""
    c = hf_model.config
    if getattr(c, "activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"unsupported activation {c.activation_function}; GPT-2 uses gelu_new")
    config = GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                       n_embd=c.n_embd, dropout=dropout, bias=True)
    model = GPT(config)
    sd_hf = {k: v for k, v in hf_model.state_dict().items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    sd = model.state_dict()
    missing = set(sd) - set(sd_hf)
    if missing:
        raise ValueError(f"Hugging Face checkpoint lacks {sorted(missing)[:5]}")
    with torch.no_grad():
        for k in sd:
            w = sd_hf[k]
            sd[k].copy_(w.t() if k.endswith(_CONV1D) else w)
    return model


def to_hf_state_dict(model: GPT, vocab_size: int | None = None) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's state dict for our model; vocab_size crops padded embedding rows."""
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach()
        if k in ("transformer.wte.weight", "lm_head.weight") and vocab_size is not None:
            v = v[:vocab_size]
        sd[k] = (v.t() if k.endswith(_CONV1D) else v).contiguous().clone()
    return sd


@torch.no_grad()
def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B, 1) from last-position logits (B, vocab): greedy at temperature 0."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eot: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True):
    """Yield (B, 1) tensors of new tokens, one step at a time, continuing each row of idx (B, T).

    Rows that produced `eot` keep yielding eot (callers stop printing them); generation stops early
    once every row has. Without the cache, each step recomputes the whole context (the reference).
    """
    B, T = idx.size()
    if T + max_new_tokens > model.config.block_size:
        raise ValueError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds block_size "
                         f"{model.config.block_size}")
    param = next(model.parameters())
    cache = KVCache(model.config, B, T + max_new_tokens, idx.device, param.dtype) if use_cache else None
    done = torch.zeros(B, 1, dtype=torch.bool, device=idx.device)
    seq, step_input = idx, idx
    for _ in range(max_new_tokens):
        logits, _ = model(step_input if use_cache else seq, cache=cache, last_only=True)
        nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
        if eot is not None:
            nxt = torch.where(done, torch.full_like(nxt, eot), nxt)
            done |= nxt == eot
        yield nxt
        if eot is not None and bool(done.all()):
            return
        step_input = nxt
        if not use_cache:
            seq = torch.cat([seq, nxt], dim=1)
