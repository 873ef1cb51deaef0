"""The GPT: GPT-2 by default, so OpenAI / Hugging Face GPT-2 weights map onto it 1:1, with the options of
the modern recipe chosen in GPTConfig.

GPT-2 (Radford et al. 2019): learned token + position embeddings, pre-LayerNorm blocks of causal
self-attention and a GELU MLP (4x), a final LayerNorm, and an output head tied to the token embedding.
Names follow GPT-2 (wte, wpe, h, ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f).

Options, each picking a module in __init__ so forward reads the same for every combination:
  pos_emb='rope'        rotary position embedding (Su et al. 2021) on queries and keys, no wpe
  norm='rmsnorm'        RMSNorm (Zhang & Sennrich 2019) in place of LayerNorm
  qk_norm=True          RMSNorm of each head's queries and keys before attention (Dehghani et al. 2023)
  mlp='relu2'|'swiglu'  ReLU squared (So et al. 2021, "Primer") or SwiGLU (Shazeer 2020)
  tie_embeddings=False  a separate output head
  logit_softcap=c       logits = c * tanh(logits / c) (Gemma 2)
  zero_init_proj=True   the projections into the residual stream start at zero (modded-nanogpt)
The modern recipe (config/train_fineweb.py) uses the modded-nanogpt / nanochat family of these; with
rope + rmsnorm + qk_norm + swiglu and no bias or softcap the model is a Qwen3 model (fineweb_gpt/hf_interop.py).

Attention runs through torch's scaled_dot_product_attention and can write into a preallocated KV cache
(KVCache) so that generation (fineweb_gpt/generation.py) feeds one new token per step. The training loss runs the
output head, the logit softcap and the cross-entropy together in chunks (torch's linear_cross_entropy, or
SoftcappedLinearCrossEntropy with a softcap), so the (tokens x vocab) logits are never held at once
(set_chunked_loss). The model is single-device code:
activation checkpointing, compile and DDP are applied to it from outside (train.py,
fineweb_gpt/activation_checkpointing.py). This file depends on torch alone.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import partial

import torch
import torch.nn as nn
from torch.nn import functional as F

LOSS_CHUNK_ROWS = 1024  # rows of logits per chunk of the training loss: 1024 x 50304 fp32 = 206 MB


def key(default, help: str, choices: tuple | None = None, range: str | None = None):
    """A GPTConfig field with its one-line meaning and the values it allows (`choices`, or a `range` written
    as an interval, "[1, inf)" or "[0, 1)"). GPTConfig checks them; train.py takes these fields as its model
    keys, so --help, config files and the configurator's checks read them from here."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": range})


def outside(value: float, interval: str) -> bool:
    """Whether value lies outside an interval written "[1, inf)" or "(0, 1]"."""
    low, high = (float(end) for end in interval[1:-1].split(","))
    return value < low or value > high or (value == low and interval[0] == "(") or \
        (value == high and interval[-1] == ")")


@dataclass
class GPTConfig:
    block_size: int = key(1024, "context length in tokens", range="[1, inf)")
    vocab_size: int = key(50304, "embedding rows: GPT-2's 50257 padded to a multiple of 64 (faster matmuls)",
                          range="[1, inf)")
    n_layer: int = key(12, "transformer blocks", range="[1, inf)")
    n_head: int = key(12, "attention heads", range="[1, inf)")
    n_embd: int = key(768, "embedding width", range="[1, inf)")
    dropout: float = key(0.0, "dropout probability (0 for pretraining; try 0.1+ when fine-tuning)", range="[0, 1)")
    bias: bool = key(True, "biases in Linear and LayerNorm layers, as GPT-2")
    pos_emb: str = key("learned", "positions: 'learned' (GPT-2) or 'rope' (rotary, on queries and keys)",
                       choices=("learned", "rope"))
    rope_theta: float = key(10000.0, "RoPE base (RoFormer's 10000)", range="(0, inf)")
    norm: str = key("layernorm", "'layernorm' (GPT-2) or 'rmsnorm'", choices=("layernorm", "rmsnorm"))
    qk_norm: bool = key(False, "RMSNorm each head's queries and keys before attention")
    mlp: str = key("gelu", "MLP activation: 'gelu' (GPT-2), 'relu2' (ReLU squared) or 'swiglu'",
                   choices=("gelu", "relu2", "swiglu"))
    tie_embeddings: bool = key(True, "share the token embedding with the output head, as GPT-2")
    logit_softcap: float = key(0.0, "logits = c*tanh(logits/c) with this c (0 = off)", range="[0, inf)")
    zero_init_proj: bool = key(False, "start the projections into the residual stream (attn/mlp c_proj) at zero")
    # the record line's options (modded-nanogpt, nanochat); each off by default, so the model above is unchanged
    value_embeds: int = key(0, "value-embedding tables: extra token embeddings mixed into the attention values of "
                            "the first and last layers (0 = off)", range="[0, inf)")
    x0_lambdas: bool = key(False, "learned per-layer scalars that scale the residual stream and mix the embedding "
                           "(x0) back into each block's input")
    unet_skips: bool = key(False, "U-net skips: the first half's block outputs added, with learned weights, to the "
                           "second half's inputs")
    doc_causal: bool = key(False, "attention stays within a document: a token never attends across eot_token")
    eot_token: int = key(50256, "the token between documents (GPT-2's <|endoftext|>); doc_causal's boundary",
                         range="[0, inf)")
    attn_window: int = key(0, "sliding-window length in tokens of the short-window layers (0 = full context)",
                           range="[0, inf)")
    window_pattern: str = key("S", "which layers use attn_window, repeated over the layers: S = short (attn_window), "
                              "L = long (full context)")

    def __post_init__(self):
        problems = []
        for f in fields(self):
            value, choices, interval = getattr(self, f.name), f.metadata.get("choices"), f.metadata.get("range")
            if choices and value not in choices:
                problems.append(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")
            if interval and outside(value, interval):
                problems.append(f"{f.name} must be in {interval}, got {value!r}")
        if not problems and self.n_embd % self.n_head:
            problems.append(self._head_mismatch())
        elif not problems and self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            problems.append(f"pos_emb='rope' rotates pairs of dimensions, so the head size must be even; "
                            f"n_embd/n_head = {self.n_embd}/{self.n_head} = {self.n_embd // self.n_head}")
        if problems:
            raise ValueError("invalid model config:\n  " + "\n  ".join(problems))

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        """The MLP's hidden width: 4 x n_embd; SwiGLU's two input matrices get 2/3 of that each (rounded up to
        a multiple of 64), so every MLP type has about the same parameters (Shazeer 2020)."""
        if self.mlp == "swiglu":
            return math.ceil(8 * self.n_embd / 3 / 64) * 64
        return 4 * self.n_embd

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


class RMSNorm(nn.RMSNorm):
    """RMSNorm computed in fp32 and returned in the input's dtype (as Llama and Qwen3 do): under autocast
    the queries and keys arrive in bf16 while the gain is fp32, which torch's fused kernel refuses."""

    def __init__(self, size: int):
        super().__init__(size, eps=1e-6)  # 1e-6 as Llama and Qwen3, so the exported model computes the same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.normalized_shape, self.weight, self.eps).to(x.dtype)


def make_norm(config: GPTConfig, size: int) -> nn.Module:
    return RMSNorm(size) if config.norm == "rmsnorm" else nn.LayerNorm(size, bias=config.bias)


class Rotary(nn.Module):
    """Rotary position embedding: rotates pairs (i, i + head_size/2) of a head's dimensions by an angle
    proportional to the absolute position (the half-split layout of GPT-NeoX, Llama and Qwen3)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        half = config.head_size // 2
        inv_freq = 1.0 / config.rope_theta ** (torch.arange(half, dtype=torch.float32) / half)
        angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)  # (block_size, hs/2)
        self.register_buffer("cos", angles.cos(), persistent=False)  # derived from the config: not saved
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """x (B, nh, T, hs) at absolute positions start..start+T-1."""
        T, half = x.size(2), x.size(3) // 2
        cos, sin = self.cos[start:start + T].to(x.dtype), self.sin[start:start + T].to(x.dtype)  # (T, hs/2)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class NoPositions(nn.Module):
    """Where the other position scheme is chosen: the input passes unchanged. In attention under learned
    positions (GPT.wpe adds them), and as GPT.wpe under rope (attention rotates queries and keys)."""

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        return x


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.q_norm = RMSNorm(config.head_size) if config.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(config.head_size) if config.qk_norm else nn.Identity()
        self.rotary = Rotary(config) if config.pos_emb == "rope" else NoPositions()

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        B, T, C = x.size()
        start = cache.pos if cache is not None else 0  # absolute position of x's first token
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head) for t in (q, k, v))  # (B, T, nh, hs)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        q, k = self.rotary(q, start), self.rotary(k, start)
        dropout = self.dropout if self.training else 0.0
        if start == 0:
            # training, or a cache's first chunk (prefill): plain causal attention over these T tokens
            if cache is not None:
                cache.write(k, v)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            k, v = cache.write(k, v)  # (B, nh, start+T, hs): everything seen so far
            if T == 1:
                y = F.scaled_dot_product_attention(q, k, v)  # one new token may look at all of them
            else:  # query i sits at absolute position start+i and may see keys 0..start+i
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class ReLUSquared(nn.Module):
    inputs = 1  # hidden values c_fc feeds it per output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class SwiGLU(nn.Module):
    """c_fc's output holds the gate and the value side by side: silu(gate) * value."""
    inputs = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = x.chunk(2, dim=-1)
        return F.silu(gate) * value


class GELU(nn.GELU):
    """GPT-2's "gelu_new": the tanh approximation."""
    inputs = 1

    def __init__(self):
        super().__init__(approximate="tanh")


ACTIVATIONS = {"gelu": GELU, "relu2": ReLUSquared, "swiglu": SwiGLU}


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.mlp_hidden
        self.act = ACTIVATIONS[config.mlp]()
        self.c_fc = nn.Linear(config.n_embd, self.act.inputs * hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config, config.n_embd)
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
        shape = (batch_size, config.n_head, max_len, config.head_size)
        self.layers = [LayerCache(torch.empty(shape, device=device, dtype=dtype),
                                  torch.empty(shape, device=device, dtype=dtype)) for _ in range(config.n_layer)]

    @property
    def pos(self) -> int:
        return self.layers[0].pos


class LearnedPositions(nn.Module):
    """GPT-2's position embedding, added to the token embedding (with pos_emb='rope' the positions enter
    attention instead)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.block_size, config.n_embd))

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        return x + self.weight[start:start + x.size(1)]


class SoftCap(nn.Module):
    """logits = cap * tanh(logits / cap): every logit within (-cap, cap) (Gemma 2)."""

    def __init__(self, cap: float):
        super().__init__()
        self.cap = cap

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.cap * torch.tanh(logits / self.cap)


def softcapped_chunk_loss(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cap: float,
                          grads: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk of rows: (summed cross-entropy of cap*tanh(x @ weight.T / cap) over the targets that are not
    -1, and, with grads, its gradient with respect to x @ weight.T in fp32 (rows, vocab)). x and weight come
    in the matmul dtype; the softcap, softmax and gradient run in fp32."""
    capped = torch.tanh((x @ weight.t()).float().div_(cap))                           # (rows, V) tanh(z/c)
    logits = capped * cap                                                              # (rows, V) softcapped
    valid = targets != -1
    picked = targets.clamp(min=0).unsqueeze(1)                                         # (rows, 1) in range
    target_logits = logits.gather(1, picked).squeeze(1)                                # (rows,)
    # softmax in place (logsumexp would allocate another (rows, V) buffer): these two are all a chunk holds
    top = logits.amax(dim=1, keepdim=True)                                             # (rows, 1)
    exp = logits.sub_(top).exp_()                                                      # (rows, V)
    total = exp.sum(dim=1, keepdim=True)                                               # (rows, 1)
    losses = (top.squeeze(1) + total.log().squeeze(1) - target_logits) * valid
    if not grads:
        return losses.sum(), None
    # d loss / d logits = softmax - one_hot, per valid row; d logits / d z = 1 - tanh(z/c)^2
    grad = exp.div_(total)                                                             # (rows, V) softmax
    grad.scatter_add_(1, picked, -torch.ones_like(picked, dtype=grad.dtype))
    grad.mul_(valid.unsqueeze(1)).mul_(capped.square_().neg_().add_(1))
    return losses.sum(), grad


class SoftcappedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of cap*tanh(x @ weight.T / cap) over the targets that are not -1, LOSS_CHUNK_ROWS
    rows at a time, the gradients of x and weight computed chunk by chunk during the forward pass (as
    liger-kernel's fused linear cross-entropy does) rather than by recomputing the logits in backward: that
    saves one of the four (rows x C x vocab) matmuls a recompute needs, at no higher peak memory: the
    gradients (N x C and vocab x C, fp32) are held from the end of forward instead of from the start of
    backward, and every activation is held at both moments. Backward only scales them. x, weight: fp32 (the gradients come back in fp32); dtype: the
    matmul dtype. A second backward through the same graph is refused (the gradients are scaled in place)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cap: float,
                dtype: torch.dtype) -> torch.Tensor:
        scale = 1.0 / (targets != -1).sum()  # the mean's divisor, as F.cross_entropy's (nan with no valid row)
        low_weight = weight.to(dtype)                                                  # (V, C)
        grad_x = torch.empty_like(x, dtype=torch.float32)                              # (N, C)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)                    # (V, C)
        total = x.new_zeros((), dtype=torch.float32)
        for start in range(0, x.size(0), LOSS_CHUNK_ROWS):
            rows = slice(start, start + LOSS_CHUNK_ROWS)
            low_x = x[rows].to(dtype)                                                  # (rows, C)
            loss, grad = softcapped_chunk_loss(low_x, low_weight, targets[rows], cap, grads=True)
            total = total + loss
            # the gradient matmuls at the matmul dtype's rate, summed in fp32; the mean's 1/N comes after them,
            # in fp32, as it would underflow fp16 (the loss scale of float16 runs arrives only in backward)
            low_grad = grad.to(dtype)
            grad_x[rows] = (low_grad @ low_weight).float().mul_(scale)
            grad_weight.add_((low_grad.t() @ low_x).float())
        grad_weight.mul_(scale)
        ctx.save_for_backward(grad_x, grad_weight)
        ctx.x_dtype, ctx.weight_dtype = x.dtype, weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_x, grad_weight = ctx.saved_tensors
        return (grad_x.mul_(grad_loss).to(ctx.x_dtype), grad_weight.mul_(grad_loss).to(ctx.weight_dtype),
                None, None, None)


def softcapped_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype,
                             cap: float) -> torch.Tensor:
    """Mean cross-entropy of cap*tanh(x @ weight.T / cap) over the targets that are not -1, for x (N, C),
    weight (V, C), targets (N,), with the matmuls in dtype; never more than LOSS_CHUNK_ROWS rows of logits at
    once. With gradients: SoftcappedLinearCrossEntropy; without (evaluation): the loss alone."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return SoftcappedLinearCrossEntropy.apply(x, weight, targets, cap, dtype)
    scale = 1.0 / (targets != -1).sum()
    low_weight = weight.to(dtype)
    total = x.new_zeros((), dtype=torch.float32)
    for start in range(0, x.size(0), LOSS_CHUNK_ROWS):
        rows = slice(start, start + LOSS_CHUNK_ROWS)
        total = total + softcapped_chunk_loss(x[rows].to(dtype), low_weight, targets[rows], cap, grads=False)[0]
    return total * scale


def torch_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               dtype: torch.dtype) -> torch.Tensor:
    """Mean cross-entropy of x @ weight.T over the targets that are not -1 (x (N, C), weight (V, C)) through
    torch's chunked F.linear_cross_entropy, the matmuls in dtype. allow_retain_graph=True keeps torch.compile's
    graph whole (without it the op warns, a graph break). The row count is set explicitly: torch's automatic
    choice sizes chunks by the vocab-to-width ratio, which gave chunks of a few rows for small models, 10x
    slower than plain on CPU."""
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=LOSS_CHUNK_ROWS, chunking_method=None,
                                                 allow_retain_graph=True)
    return F.linear_cross_entropy(x.to(dtype), weight.to(dtype), targets, ignore_index=-1, options=options)


def fused_softcapped_loss(device_type: str, cap: float) -> tuple[str, Callable]:
    """(name, loss) of the softcapped chunked loss for a device, called as softcapped_cross_entropy is: on CUDA a
    maintained fused kernel when its package is installed (both are Triton kernels, so CUDA only; neither is a
    requirement of this project), else ours. cut-cross-entropy comes first: it never builds even one chunk of
    logits. Its gradient filter is off (filter_eps=None), so its gradients are the exact ones; liger-kernel
    sums the weight's gradient in fp32 (accum_dtype). Evaluation (no gradients) always runs ours, in fp32."""
    if device_type == "cuda":
        try:
            from cut_cross_entropy import linear_cross_entropy as cce
            kernel = partial(cce, ignore_index=-1, softcap=cap, filter_eps=None)
            return "softcapped, cut-cross-entropy", partial(with_kernel, kernel, cap)
        except ImportError:
            pass
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy as liger
            kernel = partial(liger, ignore_index=-1, softcap=cap, accum_dtype=torch.float32)
            return "softcapped, liger-kernel", partial(with_kernel, kernel, cap)
        except ImportError:
            pass
    return "softcapped, ours", partial(softcapped_cross_entropy, cap=cap)


def with_kernel(kernel: Callable, cap: float, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
    """A fused kernel's loss while training; ours without gradients (evaluation in fp32)."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return kernel(x.to(dtype), weight.to(dtype), targets)
    return softcapped_cross_entropy(x, weight, targets, dtype, cap)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config, config.n_embd),
        ))
        # registered after ln_f, where GPT-2's checkpoints have it (NoPositions holds no parameters: no keys)
        self.transformer.wpe = LearnedPositions(config) if config.pos_emb == "learned" else NoPositions()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying (Press & Wolf 2017), as GPT-2
        self.softcap = SoftCap(config.logit_softcap) if config.logit_softcap else nn.Identity()
        self.set_chunked_loss(True)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Every parameter's initial value, in one place.

        GPT-2 (paper and OpenAI's code, as nanoGPT): weights N(0, 0.02); the two projections that write
        into the residual stream (attn.c_proj, mlp.c_proj) N(0, 0.02 / sqrt(2 * n_layer)), so the stream's
        variance does not grow with depth (GPT-2 paper, section 2.3); biases 0; norm gains 1, shifts 0.
        Options: zero_init_proj starts those two projections at 0, so every block begins as the identity
        and the first updates shape them (modded-nanogpt; nanochat). An untied head starts at 0, so the
        first prediction is uniform and the loss at step 0 is exactly ln(vocab) (modded-nanogpt), and the
        untied token embedding is N(0, 1): it only feeds norms, and Adam's steps are then small relative
        to it (nanochat, modded-nanogpt use unit-scale embeddings).
        """
        c, std = self.config, 0.02
        residual_std = 0.0 if c.zero_init_proj else std / math.sqrt(2 * c.n_layer)
        t = self.transformer
        nn.init.normal_(t.wte.weight, std=std if c.tie_embeddings else 1.0)  # tied: also the output head
        if not c.tie_embeddings:
            nn.init.zeros_(self.lm_head.weight)
        if c.pos_emb == "learned":
            nn.init.normal_(t.wpe.weight, std=std)
        for block in t.h:
            for linear, weight_std in ((block.attn.c_attn, std), (block.attn.c_proj, residual_std),
                                       (block.mlp.c_fc, std), (block.mlp.c_proj, residual_std)):
                nn.init.normal_(linear.weight, std=weight_std)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
        for norm in self.modules():
            if isinstance(norm, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.ones_(norm.weight)
                if getattr(norm, "bias", None) is not None:
                    nn.init.zeros_(norm.bias)

    def num_params(self) -> dict[str, int]:
        """Counted from the parameters (each once): wte, wpe, lm_head (0 when tied to wte), blocks (+ ln_f), total."""
        t = self.transformer
        wte = t.wte.weight.numel()
        wpe = sum(p.numel() for p in t.wpe.parameters())
        head = 0 if self.config.tie_embeddings else self.lm_head.weight.numel()
        total = sum(p.numel() for p in self.parameters())
        return {"wte": wte, "wpe": wpe, "lm_head": head, "blocks": total - wte - wpe - head, "total": total}

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
        """(logits, loss). Without targets: logits (B, T, vocab), or (B, 1, vocab) for the final position only
        with last_only (all that sampling needs), and loss None. With targets (-1 = ignore): the mean
        cross-entropy, and logits None when the loss was computed in chunks without them.

        With a cache, idx continues the cached sequence at position cache.pos.
        """
        B, T = idx.size()
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        x = self.transformer.wpe(self.transformer.wte(idx), start)  # (B, T, C), with learned positions added
        x = self.transformer.drop(x)
        layer_caches = cache.layers if cache is not None else [None] * len(self.transformer.h)
        for block, layer_cache in zip(self.transformer.h, layer_caches):
            x = block(x, layer_cache)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.logits(x[:, -1:, :] if last_only else x), None  # (B, 1 or T, vocab)
        return self.loss(x, targets)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.softcap(self.lm_head(x))

    def set_chunked_loss(self, chunked: bool) -> bool:
        """How the training loss is computed (the same loss either way; not saved): the output head and the
        cross-entropy together in chunks, never holding the (B*T, vocab) logits (on by default), or from
        the full logits. The chunks apply the logit softcap too (fused_softcapped_loss picks the kernel for
        the parameters' device, so call this on the model already on its device). Returns whether the loss is
        chunked; loss_kind names how."""
        self.loss_chunked = chunked
        self.loss = self.loss_by_chunks if chunked else self.loss_from_logits
        cap = self.config.logit_softcap
        if cap:
            self.loss_kind, self.head_loss = fused_softcapped_loss(self.lm_head.weight.device.type, cap)
        else:
            self.loss_kind, self.head_loss = "torch's linear_cross_entropy", torch_linear_cross_entropy
        if not chunked:
            self.loss_kind = "full logits"
        return self.loss_chunked

    def loss_from_logits(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, T, vocab), mean cross-entropy over the targets that are not -1)."""
        logits = self.logits(x)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)

    def loss_by_chunks(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, self.chunked_cross_entropy(x, targets)

    def chunked_cross_entropy(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """lm_head (+ softcap) + cross-entropy over the (B*T) rows, LOSS_CHUNK_ROWS rows at a time: the logits
        exist one chunk at a time (head_loss, set by set_chunked_loss). Training under autocast runs the head's
        matmuls in the autocast dtype (bf16 or fp16: the tensor-core rate, not TF32's) with softmax and
        gradients accumulated in fp32; the loss comes back as fp32, though for bf16 inputs torch's op (no
        softcap) sums it in bf16 (about 3 significant digits per micro-batch; the logged loss averages the
        micro-batches in fp32). Without gradients (evaluation) it runs in fp32, so val losses compare to 4
        decimals whatever the training dtype."""
        device = x.device.type
        low = torch.is_autocast_enabled(device) and torch.is_grad_enabled()
        dtype = torch.get_autocast_dtype(device) if low else torch.float32
        with torch.autocast(device, enabled=False):
            loss = self.head_loss(x.reshape(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1), dtype)
        return loss.float()
