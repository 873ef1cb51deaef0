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
  value_embeds=k        k value-embedding tables: table j's vectors for the input tokens are mixed into the
                        attention values of layer j and of layer n_layer-k+j (the first k and the last k
                        layers share them), v = a*v + b*ve with learned a, b per layer (modded-nanogpt)
  x0_lambdas=True       the embedding is RMS-normed, and before block i x = resid_lambdas[i]*x + x0_lambdas[i]*x0,
                        x0 being that normed embedding, with learned per-layer scalars (nanochat, modded-nanogpt)
  unet_skips=True       block j's output (j < n_layer//2) is added, times a learned weight, to the input of block
                        n_layer-1-j: the first half's outputs in reverse order into the second half (modded-nanogpt)
  doc_causal=True       a token attends only within its document (documents split at eot_token; modded-nanogpt)
  attn_window=w         the window_pattern's S layers attend to the last w tokens only (nanochat, modded-nanogpt)
The modern recipe (config/train_fineweb.py) uses the modded-nanogpt / nanochat family of these; with
rope + rmsnorm + qk_norm + swiglu and no bias or softcap the model is a Qwen3 model (fineweb_gpt/hf_interop.py).

Attention runs through torch's scaled_dot_product_attention (FlexAttention for document or window masks on
CUDA) and can write into a preallocated KV cache
(KVCache) so that generation (fineweb_gpt/generation.py) feeds one new token per step. The training loss runs the
output head, the logit softcap and the cross-entropy together in chunks (torch's linear_cross_entropy, or
SoftcappedLinearCrossEntropy with a softcap), so the (tokens x vocab) logits are never held at once
(set_chunked_loss). The model is single-device code:
activation checkpointing, compile and DDP are applied to it from outside (train.py,
fineweb_gpt/activation_checkpointing.py). This file depends on torch alone.
"""
from __future__ import annotations

import functools
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
    init: str = key("gpt2", "initial weights: 'gpt2' (N(0, 0.02) matrices, with the options above) or 'nanochat' "
                    "(nanochat's scales: uniform c_attn/c_fc of std 1/sqrt(n_embd) and 0.4/sqrt(n_embd), zero "
                    "c_proj, embedding N(0, 0.8), head N(0, 0.001); needs tie_embeddings=False)",
                    choices=("gpt2", "nanochat"))
    # the record line's options (modded-nanogpt, nanochat); each off by default, so the model above is unchanged
    value_embeds: int = key(0, "value-embedding tables (0 = off): table j is mixed into the attention values of "
                            "layer j and of layer n_layer-k+j (k = this value, at most n_layer/2); each table is "
                            "vocab_size x n_embd parameters", range="[0, inf)")
    x0_lambdas: bool = key(False, "RMS-norm the embedding (x0) and, before block i, x = resid_lambdas[i]*x + "
                           "x0_lambdas[i]*x0 with learned per-layer scalars")
    unet_skips: bool = key(False, "U-net skips: block j's output (j < n_layer/2) added, with a learned weight, to "
                           "block n_layer-1-j's input")
    doc_causal: bool = key(False, "attention stays within a document: a token never attends across eot_token")
    eot_token: int = key(50256, "the token between documents (GPT-2's <|endoftext|>); doc_causal's boundary",
                         range="[0, inf)")
    attn_window: int = key(0, "sliding-window length in tokens of the short-window layers (0 = full context; so is "
                           "a window as long as the context or longer)", range="[0, inf)")
    window_pattern: str = key("S", "which layers use attn_window, repeated over the layers: S = short (attn_window), "
                              "L = long (full context); the last layer is always long (as nanochat)")

    def __post_init__(self):
        problems = []
        for f in fields(self):
            value, choices, interval = getattr(self, f.name), f.metadata.get("choices"), f.metadata.get("range")
            if choices and value not in choices:
                problems.append(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")
            if interval and outside(value, interval):
                problems.append(f"{f.name} must be in {interval}, got {value!r}")
        if not problems and self.init == "nanochat" and self.tie_embeddings:
            problems.append("init='nanochat' gives the token embedding and the output head different scales (0.8 and "
                            "0.001): set tie_embeddings=False")
        if not problems and 2 * self.value_embeds > self.n_layer:
            problems.append(f"value_embeds={self.value_embeds} needs n_layer >= {2 * self.value_embeds} (each table "
                            f"feeds one of the first and one of the last value_embeds layers); n_layer={self.n_layer} "
                            f"allows value_embeds <= {self.n_layer // 2}")
        if not self.window_pattern or set(self.window_pattern) - {"S", "L"}:
            problems.append(f"window_pattern must be a string of S (short window) and L (long: full context), "
                            f"got {self.window_pattern!r}")
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


def value_embed_table(layer: int, config: GPTConfig) -> int | None:
    """The value-embedding table that feeds this layer's attention values, or None: table j feeds layer j and
    layer n_layer-k+j, so the first k and the last k layers share the k tables (modded-nanogpt's layout)."""
    k, n = config.value_embeds, config.n_layer
    if layer < k:
        return layer
    return layer - (n - k) if layer >= n - k else None


class ValueEmbeddings(nn.Module):
    """The value-embedding tables (value_embeds of them, each vocab_size x n_embd), looked up once per forward.

    Why modded-nanogpt's layout rather than nanochat's: nanochat gives every other layer its own table (6
    tables at 12 layers, each about 0.5 GB with AdamW state at 50K x 768), while modded-nanogpt shares k
    tables between the first and last k layers, so the table count, the memory, is a key of its own that a
    12 GB card can set to 1 or 2 at any depth. Under value_embeds=0 there are no tables and no layer gets one."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.tables = nn.ModuleList([nn.Embedding(config.vocab_size, config.n_embd) for _ in range(config.value_embeds)])
        self.table_of_layer = [value_embed_table(i, config) for i in range(config.n_layer)]

    def forward(self, idx: torch.Tensor) -> list[torch.Tensor | None]:
        """Per layer: its table's vectors (B, T, C) for the tokens idx (B, T), or None."""
        looked_up = [table(idx) for table in self.tables]
        return [None if j is None else looked_up[j] for j in self.table_of_layer]


class ValueEmbedMix(nn.Module):
    """v = lambdas[0] * v + lambdas[1] * ve: the attention values mixed with the layer's value embedding
    (modded-nanogpt, after the value residual learning of Zhou et al. 2024, "ResFormer")."""

    def __init__(self):
        super().__init__()
        self.lambdas = nn.Parameter(torch.empty(2))

    def forward(self, v: torch.Tensor, ve: torch.Tensor) -> torch.Tensor:
        """v (B, T, nh, hs), ve (B, T, C) in the table's dtype (fp32 under autocast: cast to v's)."""
        return self.lambdas[0] * v + self.lambdas[1] * ve.view_as(v).to(v.dtype)


class NoValueEmbed(nn.Module):
    """A layer without a value-embedding table: the values pass unchanged (ve is None)."""

    def forward(self, v: torch.Tensor, ve: None) -> torch.Tensor:
        return v


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.q_norm = RMSNorm(config.head_size) if config.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(config.head_size) if config.qk_norm else nn.Identity()
        self.rotary = Rotary(config) if config.pos_emb == "rope" else NoPositions()
        self.value_mix = ValueEmbedMix() if value_embed_table(layer, config) is not None else NoValueEmbed()
        self.attend = MaskedAttention(short_window_layers(config)[layer], config.dropout) if masked(config) \
            else CausalAttention(config.dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, *, ve: torch.Tensor | None = None,
                masks: AttentionMasks | None = None) -> torch.Tensor:
        """x (B, T, C); ve: this layer's value embedding (B, T, C), None for a layer without one; masks: the
        document and window masks of this forward (None when both are off)."""
        B, T, C = x.size()
        start = cache.pos if cache is not None else 0  # absolute position of x's first token
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head) for t in (q, k, v))  # (B, T, nh, hs)
        v = self.value_mix(v, ve)  # before the cache: cached values already hold their value embedding
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        q, k = self.rotary(q, start), self.rotary(k, start)
        y = self.attend(q, k, v, cache, masks)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class CausalAttention(nn.Module):
    """Plain causal attention through torch's SDPA (flash where the device has it): the default, with neither
    documents nor windows."""

    def __init__(self, dropout: float):
        super().__init__()
        self.dropout = dropout

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache | None,
                masks: None) -> torch.Tensor:
        start = cache.pos if cache is not None else 0
        T = q.size(2)
        dropout = self.dropout if self.training else 0.0
        if start == 0:
            # training, or a cache's first chunk (prefill): plain causal attention over these T tokens
            if cache is not None:
                cache.write(k, v)
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        k, v = cache.write(k, v)  # (B, nh, start+T, hs): everything seen so far
        if T == 1:
            return F.scaled_dot_product_attention(q, k, v)  # one new token may look at all of them
        # query i sits at absolute position start+i and may see keys 0..start+i
        mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(diagonal=start)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# ---------------------------------------------------------------- document-causal and sliding-window attention
#
# Documents: prepare.py writes eot_token after each document, so in a row of tokens an eot is followed by the
# next document's first token and, as GPT-2 trained it, predicts it: the eot starts the next document. A
# token's document id is the count of eot tokens at or before it (modded-nanogpt derives document ids the
# same way), so an eot belongs to the document it starts, and the tokens before a row's first eot (the
# tail of a document cut by the row's start) form a document of their own.
# Windows: a short-window layer's query at position p sees the keys at p-attn_window+1..p; a long layer
# sees the whole context. The short window is a tensor (GPT.set_attn_window), so that a window schedule
# changes it without recompiling a compiled model.
# Kernels: on CUDA, FlexAttention with block masks (blocks outside every document and window are
# skipped), compiled; elsewhere, and on CUDA after GPT.use_dense_attention() or with attention dropout
# (FlexAttention has none), SDPA with a dense (B, 1, T, T) boolean mask from the same mask function.
# FlexAttention has no backward on CPU in torch 2.13, hence the dense path there. Decoding with a KV cache
# always uses the dense path: its masks are small.

def masked(config: GPTConfig) -> bool:
    """Whether attention needs a mask beyond causality: documents or a window."""
    return config.doc_causal or config.attn_window > 0


def short_window_layers(config: GPTConfig) -> list[bool]:
    """Per layer, whether it uses the short window: window_pattern repeated over the layers, the last layer
    always long (nanochat forces the final layer to the full context). All long when attn_window is 0."""
    if not config.attn_window:
        return [False] * config.n_layer
    pattern = config.window_pattern
    short = [pattern[i % len(pattern)] == "S" for i in range(config.n_layer)]
    short[-1] = False
    return short


def attention_allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, q_doc: torch.Tensor, k_doc: torch.Tensor,
                      window: torch.Tensor) -> torch.Tensor:
    """Whether the query at q_pos in document q_doc may attend to the key at k_pos in document k_doc: causal,
    within `window` tokens (the query itself counts), same document. Elementwise, so the same function is
    FlexAttention's mask_mod and, on broadcast index tensors, builds the dense mask."""
    return (k_pos <= q_pos) & (q_pos - k_pos < window) & (q_doc == k_doc)


# FlexAttention's kernel options by CUDA compute capability. torch 2.13's defaults for sm8x other than the
# A100 take the A100's forward blocks (BLOCK_M 128 x BLOCK_N 64, 3 stages: for bf16 and head size 128,
# 32 KB of queries plus 3 x 32 KB of keys and values = 128 KB of shared memory), more than the about 100 KB
# that a block of an Ampere/Ada consumer card (sm86, sm89) or a Blackwell consumer card (sm120) may use:
# these get 64 x 64 blocks in 2 stages (16 KB + 2 x 32 KB = 80 KB). Every other device keeps torch's defaults.
SMALL_SHARED_MEMORY_CAPABILITIES = {(8, 6), (8, 7), (8, 9), (12, 0), (12, 1)}
SMALL_FLEX_KERNEL_OPTIONS = {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 64, "fwd_num_stages": 2}


def flex_kernel_options(device: torch.device) -> dict:
    """FlexAttention's kernel_options for this CUDA device (the table above); {} = torch's defaults."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) in SMALL_SHARED_MEMORY_CAPABILITIES:
        return dict(SMALL_FLEX_KERNEL_OPTIONS)
    return {}


@functools.cache
def compiled_flex_attention():
    """flex_attention compiled once: uncompiled it materialises the whole score matrix."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def flex_attention_error(device: str, dtype: torch.dtype, n_head: int, head_size: int) -> tuple[str, str] | None:
    """Run a small compiled FlexAttention forward and backward on device with the kernel options the model
    uses; None when it works, else (summary, traceback) of the failure (a kernel that needs more shared memory
    than the GPU has, a Triton that does not support it, or a bug of ours), so that the caller can switch the
    model to dense masks and still show what went wrong. The summary is the exception's type and the first line
    of its message: compiler errors append advice lines after the message."""
    import traceback
    from torch.nn.attention.flex_attention import create_block_mask
    try:
        q, k, v = (torch.randn(1, n_head, 256, head_size, device=device, dtype=dtype, requires_grad=True)
                   for _ in range(3))
        block_mask = create_block_mask(lambda b, h, qi, ki: ki <= qi, None, None, 256, 256, device=device)
        out = compiled_flex_attention()(q, k, v, block_mask=block_mask,
                                        kernel_options=flex_kernel_options(torch.device(device)))
        out.sum().backward()
        return None
    except Exception as e:  # any failure to build or run the kernel means: use the dense path
        cause = getattr(e, "inner_exception", None) or e  # dynamo's BackendCompilerFailed wraps the real error
        summary = "".join(traceback.format_exception_only(cause)).strip().splitlines()[0]
        return summary, traceback.format_exc()


class AttentionMasks:
    """One forward's attention masks: the queries' absolute positions and documents, the two windows (short,
    long) as tensors, and either the masks built for a whole row (prebuilt[short], a FlexAttention BlockMask
    or a dense boolean mask) or, with a KV cache, nothing prebuilt: each layer masks its own cached keys."""

    def __init__(self, q_pos: torch.Tensor, q_doc: torch.Tensor, windows: tuple[torch.Tensor, torch.Tensor],
                 prebuilt: dict | None = None, kernel_options: dict | None = None):
        self.q_pos, self.q_doc, self.windows = q_pos, q_doc, windows  # (T,), (B, T), (short, long)
        self.prebuilt, self.kernel_options = prebuilt, kernel_options

    def dense(self, k_pos: torch.Tensor, k_doc: torch.Tensor, short: bool) -> torch.Tensor:
        """(B, 1, T, S) boolean mask of these queries over keys at positions k_pos (S,) in documents k_doc (B, S)."""
        return attention_allowed(self.q_pos[None, :, None], k_pos[None, None, :], self.q_doc[:, :, None],
                                 k_doc[:, None, :], self.windows[0] if short else self.windows[1]).unsqueeze(1)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, short: bool, dropout: float) -> torch.Tensor:
        """Attention of a whole row (no cache) with the prebuilt mask: FlexAttention for a BlockMask, else SDPA."""
        mask = self.prebuilt[short]
        if isinstance(mask, torch.Tensor):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return compiled_flex_attention()(q, k, v, block_mask=mask, kernel_options=self.kernel_options)


class DocumentWindowMasks(nn.Module):
    """Builds each forward's AttentionMasks from the input ids (GPT.attn_masks when documents or windows are on).
    The windows are buffers, not saved: the short one follows GPT.set_attn_window (a window schedule), the long
    one is the whole context."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.boundary = config.eot_token if config.doc_causal else -1  # no id is -1: one document per row
        self.has_short = any(short_window_layers(config))
        self.register_buffer("short_window", torch.tensor(config.attn_window or config.block_size), persistent=False)
        self.register_buffer("long_window", torch.tensor(config.block_size), persistent=False)
        self.dropout = config.dropout
        self.flex = True  # on CUDA; GPT.use_dense_attention() turns it off

    def documents(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) document ids: eot tokens at or before each token (an eot starts the next document)."""
        return (idx == self.boundary).cumsum(dim=1)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> AttentionMasks:
        windows = (self.short_window, self.long_window)
        start = cache.pos if cache is not None else 0
        q_pos = torch.arange(start, start + idx.size(1), device=idx.device)
        if cache is not None:  # documents continue from the cached ones; each layer masks its cached keys
            return AttentionMasks(q_pos, cache.continue_documents(self.documents(idx)), windows)
        q_doc = self.documents(idx)
        masks = AttentionMasks(q_pos, q_doc, windows)
        kinds = (True, False) if self.has_short else (False,)
        if self.uses_flex(idx):
            masks.prebuilt = {short: self.block_mask(q_doc, windows[not short]) for short in kinds}
            masks.kernel_options = flex_kernel_options(idx.device)
        else:
            masks.prebuilt = {short: masks.dense(q_pos, q_doc, short) for short in kinds}
        return masks

    def uses_flex(self, idx: torch.Tensor) -> bool:
        return idx.is_cuda and self.flex and not (self.training and self.dropout)

    def block_mask(self, docs: torch.Tensor, window: torch.Tensor):
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(b, h, q, k):
            return attention_allowed(q, k, docs[b, q], docs[b, k], window)
        B, T = docs.shape
        # compiled inside a compiled model; eager callers (evaluation of the raw model) compile it here
        return create_block_mask(mask_mod, B, None, T, T, device=docs.device,
                                 _compile=docs.is_cuda and not torch.compiler.is_compiling())


class MaskedAttention(nn.Module):
    """Document-causal and/or sliding-window attention of one layer (short: this layer uses the short window)."""

    def __init__(self, short: bool, dropout: float):
        super().__init__()
        self.short, self.dropout = short, dropout

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: SlidingLayerCache | None,
                masks: AttentionMasks) -> torch.Tensor:
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            return masks.attend(q, k, v, self.short, dropout)
        keys, values, k_pos, k_doc = cache.with_new(k, v, masks.q_pos, masks.q_doc)  # the cached keys, then these
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=masks.dense(k_pos, k_doc, self.short))
        cache.write(k, v, masks.q_pos, masks.q_doc)
        return y


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
    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, *, ve: torch.Tensor | None = None,
                masks: AttentionMasks | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, ve=ve, masks=masks)
        return x + self.mlp(self.ln_2(x))


class EmbeddingNorm(nn.Module):
    """RMSNorm without a gain, in fp32, of the embedding that starts the residual stream and is mixed back in
    as x0 (nanochat and modded-nanogpt norm it so; without a gain, as they do)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.size(-1),), eps=1e-6).to(x.dtype)


class X0Lambdas(nn.Module):
    """Before block i: x = resid_lambdas[i] * x + x0_lambdas[i] * x0 (nanochat's per-layer scalars; modded-nanogpt
    has the same pair per block)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.resid_lambdas = nn.Parameter(torch.empty(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.empty(config.n_layer))

    def forward(self, x: torch.Tensor, x0: torch.Tensor, layer: int) -> torch.Tensor:
        return self.resid_lambdas[layer] * x + self.x0_lambdas[layer] * x0


class NoX0(nn.Module):
    """x0_lambdas=False: the block's input is the residual stream as it is."""

    def forward(self, x: torch.Tensor, x0: torch.Tensor, layer: int) -> torch.Tensor:
        return x


class UNetSkips(nn.Module):
    """U-net skips (modded-nanogpt record of 2024-11-10): block n-1-j's input gains weights[m] * block j's output
    for j < n//2, so the first half's outputs enter the second half in reverse order (the last one first;
    m counts the receiving layers from the first). With an odd n_layer the middle block receives none."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_layer = config.n_layer
        self.weights = nn.Parameter(torch.empty(config.n_layer // 2))

    def forward(self, x: torch.Tensor, outputs: list[torch.Tensor], layer: int) -> torch.Tensor:
        """x: block `layer`'s input; outputs: the outputs of the blocks before it."""
        source = self.n_layer - 1 - layer
        if source >= layer:  # the first half (and an odd count's middle block) receives no skip
            return x
        return x + self.weights[layer - (self.n_layer - self.n_layer // 2)] * outputs[source]


class NoSkips(nn.Module):
    def forward(self, x: torch.Tensor, outputs: list[torch.Tensor], layer: int) -> torch.Tensor:
        return x


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


class SlidingLayerCache:
    """One layer's keys and values under document or window masks: the last `size` tokens in a ring buffer
    (token at position p in slot p % size; a short-window layer's size is its window, so its cache never
    holds more), with each slot's absolute position and document. Empty slots sit at a position no query
    reaches. Queries attend to the cached slots followed by their own keys (with_new), then write them."""
    EMPTY = -(1 << 40)  # the position of an empty slot: further back than any window or context

    def __init__(self, shape: tuple[int, int, int, int], device, dtype: torch.dtype):
        B, _, size, _ = shape
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.slot_pos = torch.full((size,), self.EMPTY, dtype=torch.long, device=device)
        self.slot_doc = torch.zeros(B, size, dtype=torch.long, device=device)
        self.pos = 0

    def with_new(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, doc: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(keys, values (B, nh, size+T, hs), positions (size+T,), documents (B, size+T)): the cached slots
        followed by the new keys k, v (B, nh, T, hs) at positions pos (T,) in documents doc (B, T)."""
        return (torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2), torch.cat((self.slot_pos, pos)),
                torch.cat((self.slot_doc, doc), dim=1))

    def write(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, doc: torch.Tensor) -> None:
        """Store the new tokens (only the last `size` of them fit) in their slots, in the cache's dtype (under
        autocast they come in the autocast dtype; index assignment, unlike LayerCache's slices, does not cast)."""
        size = self.k.size(2)
        keep = min(k.size(2), size)
        slots = pos[-keep:] % size
        self.k[:, :, slots] = k[:, :, -keep:].to(self.k.dtype)
        self.v[:, :, slots] = v[:, :, -keep:].to(self.v.dtype)
        self.slot_pos[slots] = pos[-keep:]
        self.slot_doc[:, slots] = doc[:, -keep:]
        self.pos += k.size(2)


class KVCache:
    """Keys and values for every layer, allocated once for batch_size x max_len tokens (under document or
    window masks: SlidingLayerCache, a short-window layer's no longer than its window)."""

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype: torch.dtype):
        if max_len > config.block_size:
            raise ValueError(f"cache length {max_len} exceeds block_size {config.block_size}")
        shape = (batch_size, config.n_head, max_len, config.head_size)
        if masked(config):
            windowed = (batch_size, config.n_head, min(max_len, config.attn_window), config.head_size)
            self.layers = [SlidingLayerCache(windowed if short else shape, device, dtype)
                           for short in short_window_layers(config)]
        else:
            self.layers = [LayerCache(torch.empty(shape, device=device, dtype=dtype),
                                      torch.empty(shape, device=device, dtype=dtype)) for _ in range(config.n_layer)]
        self.last_doc = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # document of the last token

    @property
    def pos(self) -> int:
        return self.layers[0].pos

    def continue_documents(self, docs: torch.Tensor) -> torch.Tensor:
        """The new tokens' documents (B, T), given their ids counted from 0 within the new chunk: they continue
        the cached sequence's last document."""
        docs = docs + self.last_doc
        self.last_doc = docs[:, -1:]
        return docs


class NoMasks(nn.Module):
    """GPT.attn_masks with neither documents nor windows: attention is plain causal."""

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> None:
        return None


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
            h=nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)]),
            ln_f=make_norm(config, config.n_embd),
        ))
        # registered after ln_f, where GPT-2's checkpoints have it (NoPositions holds no parameters: no keys)
        self.transformer.wpe = LearnedPositions(config) if config.pos_emb == "learned" else NoPositions()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying (Press & Wolf 2017), as GPT-2
        self.softcap = SoftCap(config.logit_softcap) if config.logit_softcap else nn.Identity()
        # the record line's options (each holds no parameters when off, so the state dict is GPT-2's)
        self.value_embeds = ValueEmbeddings(config)
        self.embed_norm = EmbeddingNorm() if config.x0_lambdas else nn.Identity()
        self.x0_mix = X0Lambdas(config) if config.x0_lambdas else NoX0()
        self.unet = UNetSkips(config) if config.unet_skips else NoSkips()
        self.attn_masks = DocumentWindowMasks(config) if masked(config) else NoMasks()
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

        The record line's parameters (none exist while their options are off, so nothing above changes):
        value_embeds: each table N(0, 1), as the untied token embedding and as modded-nanogpt's value-embedding
        records (2024-12-04, 2024-12-08: nn.Embedding's default N(0, 1)); each layer's mix v = 0.5*v + 0.5*ve
        (modded-nanogpt 2024-12-08, the value-residual lambdas of @Grad62304977).
        x0_lambdas: resid_lambdas[i] = 1.15 - 0.10 * i/(n_layer-1) and x0_lambdas[i] = 0.20 - 0.15 * i/(n_layer-1):
        early layers keep more of the stream and take more of the embedding (nanochat gpt.py init_weights,
        commit 92d63d4; 1.15 and 0.20 at a single layer).
        unet_skips: every skip weight 1 (modded-nanogpt record of 2024-11-10, torch.ones).
        init='nanochat' replaces the matrices' and embeddings' values with nanochat's (init_as_nanochat).
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
        if c.init == "nanochat":
            self.init_as_nanochat()
        for norm in self.modules():
            if isinstance(norm, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.ones_(norm.weight)
                if getattr(norm, "bias", None) is not None:
                    nn.init.zeros_(norm.bias)
        self.init_record_options()

    @torch.no_grad()
    def init_as_nanochat(self) -> None:
        """init='nanochat': nanochat's scales (gpt.py init_weights, commit 92d63d4), in place of the matrices'
        and embeddings' values above. Token embedding N(0, 0.8); output head N(0, 0.001), small but not zero
        so the head's gradient reaches the blocks from the first step; c_attn uniform with std 1/sqrt(n_embd)
        (uniform "to avoid outliers", bound sqrt(3) times the std); c_fc uniform with 0.4 times that std;
        both c_proj 0, so each block starts as the identity. Biases stay 0."""
        t, bound = self.transformer, math.sqrt(3 / self.config.n_embd)  # uniform(-b, b) has std b/sqrt(3)
        nn.init.normal_(t.wte.weight, std=0.8)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in t.h:
            nn.init.uniform_(block.attn.c_attn.weight, -bound, bound)
            nn.init.uniform_(block.mlp.c_fc.weight, -0.4 * bound, 0.4 * bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)

    @torch.no_grad()
    def init_record_options(self) -> None:
        """The value embeddings, x0/residual lambdas and U-net skip weights (see init_weights for the sources)."""
        n = self.config.n_layer
        for table in self.value_embeds.tables:
            nn.init.normal_(table.weight, std=1.0)
        for mix in self.modules():
            if isinstance(mix, ValueEmbedMix):
                nn.init.constant_(mix.lambdas, 0.5)
            elif isinstance(mix, X0Lambdas):
                depth = torch.arange(n, dtype=torch.float32) / max(n - 1, 1)  # 0 at the first layer, 1 at the last
                mix.resid_lambdas.copy_(1.15 - 0.10 * depth)
                mix.x0_lambdas.copy_(0.20 - 0.15 * depth)
            elif isinstance(mix, UNetSkips):
                nn.init.ones_(mix.weights)

    def num_params(self) -> dict[str, int]:
        """Counted from the parameters (each once): wte, wpe, lm_head (0 when tied to wte), value_embeds (the
        value-embedding tables), blocks (+ ln_f and the record line's scalars), total."""
        t = self.transformer
        wte = t.wte.weight.numel()
        wpe = sum(p.numel() for p in t.wpe.parameters())
        head = 0 if self.config.tie_embeddings else self.lm_head.weight.numel()
        value_embeds = sum(p.numel() for p in self.value_embeds.parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"wte": wte, "wpe": wpe, "lm_head": head, "value_embeds": value_embeds,
                "blocks": total - wte - wpe - head - value_embeds, "total": total}

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
        x = x0 = self.transformer.drop(self.embed_norm(x))  # x0: mixed back into every block's input (x0_lambdas)
        ves = self.value_embeds(idx)  # per layer: its value embedding (B, T, C), or None
        layer_caches = cache.layers if cache is not None else [None] * len(self.transformer.h)
        masks = self.attn_masks(idx, cache)  # document and window masks of this forward (None when both are off)
        outputs = []  # the blocks' outputs, for the U-net skips
        for i, (block, layer_cache, ve) in enumerate(zip(self.transformer.h, layer_caches, ves)):
            x = self.x0_mix(self.unet(x, outputs, i), x0, i)
            x = block(x, layer_cache, ve=ve, masks=masks)
            outputs.append(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.logits(x[:, -1:, :] if last_only else x), None  # (B, 1 or T, vocab)
        return self.loss(x, targets)

    def set_attn_window(self, window: int) -> None:
        """The short-window layers' window from now on (a window schedule); no recompilation, as it is a tensor."""
        if isinstance(self.attn_masks, DocumentWindowMasks):
            self.attn_masks.short_window.fill_(window)

    def use_dense_attention(self) -> None:
        """Document and window masks through SDPA with dense masks on CUDA too (when FlexAttention fails there)."""
        if isinstance(self.attn_masks, DocumentWindowMasks):
            self.attn_masks.flex = False

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
