"""GPT-2 and Hugging Face weights, in and out: OpenAI's GPT-2 checkpoints become our GPT, and our GPT
becomes a transformers model folder (export.py is the command line over this): GPT2LMHeadModel for
GPT-2's option set, Qwen3ForCausalLM for the modern option set that Qwen3 computes exactly (RoPE,
RMSNorm, per-head QK RMSNorm, SwiGLU, no biases, no logit softcap).

Our parameter names are GPT-2's, so the GPT-2 mapping is 1:1 except that GPT2LMHeadModel stores the
four block matrices as Conv1D, (in, out), transposed relative to nn.Linear. For Qwen3 the fused
c_attn splits into q/k/v_proj and the fused SwiGLU c_fc into gate_proj and up_proj. transformers and
tiktoken are imported inside the functions that need them.
"""
from __future__ import annotations

import os

import torch

from fineweb_gpt.errors import UserError
from model import GPT, GPTConfig

GPT2_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# What each exported architecture computes, as GPTConfig option values (anything else does not export).
_NO_RECORD_OPTIONS = dict(value_embeds=0, x0_lambdas=False, unet_skips=False)  # neither computes these
ARCHITECTURES = {
    "GPT2LMHeadModel": dict(pos_emb="learned", norm="layernorm", qk_norm=False, mlp="gelu", logit_softcap=0.0,
                            **_NO_RECORD_OPTIONS),
    "Qwen3ForCausalLM": dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", logit_softcap=0.0, bias=False,
                             **_NO_RECORD_OPTIONS),
}
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class HubError(UserError):
    """OpenAI's GPT-2 weights could not be had from the Hugging Face Hub (offline, not cached)."""


def from_pretrained(model_type: str, dropout: float = 0.0) -> GPT:
    """OpenAI's GPT-2 weights (gpt2, gpt2-medium, gpt2-large, gpt2-xl), downloaded by transformers."""
    if model_type not in GPT2_MODELS:
        raise ValueError(f"unknown GPT-2 model {model_type!r}: use {', '.join(GPT2_MODELS)}")
    from transformers import GPT2LMHeadModel
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(model_type)
    except OSError as e:
        raise HubError(f"could not load {model_type} through transformers ({str(e).splitlines()[0][:200]}); the "
                         f"weights are downloaded from Hugging Face on first use: check your connection") from e
    return from_hf(hf_model, dropout=dropout)


def from_hf(hf_model, dropout: float = 0.0) -> GPT:
    """Our GPT with the weights of a transformers GPT2LMHeadModel."""
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


def hf_architecture(config: GPTConfig) -> str:
    """The transformers architecture that computes exactly what this model does, or a ValueError naming the
    options that keep each candidate out of reach."""
    misses = {arch: [f"{k}={getattr(config, k)!r} (needs {v!r})" for k, v in need.items() if getattr(config, k) != v]
              for arch, need in ARCHITECTURES.items()}
    for arch, missed in misses.items():
        if not missed:
            return arch
    raise ValueError("no transformers architecture computes this model's option set, so it cannot be exported: "
                     + "; ".join(f"{arch} differs in {', '.join(m)}" for arch, m in misses.items())
                     + ". Sample from it with sample.py, or train an exportable option set")


def to_hf_model(model: GPT, vocab_size: int, eot_id: int = 50256):
    """A transformers model with our weights: GPT2LMHeadModel or Qwen3ForCausalLM (see hf_architecture)."""
    arch = hf_architecture(model.config)
    hf = gpt2_model(model, vocab_size, eot_id) if arch == "GPT2LMHeadModel" else qwen3_model(model, vocab_size, eot_id)
    return hf.eval()


def gpt2_model(model: GPT, vocab_size: int, eot_id: int):
    """A GPT2LMHeadModel with our weights (biases are zero if the model has none)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    c = model.config
    hf_config = GPT2Config(vocab_size=vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                           n_head=c.n_head, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                           attn_pdrop=0.0, layer_norm_epsilon=1e-5, bos_token_id=eot_id, eos_token_id=eot_id,
                           tie_word_embeddings=c.tie_embeddings, architectures=["GPT2LMHeadModel"])
    hf = GPT2LMHeadModel(hf_config)
    ours = to_hf_state_dict(model, vocab_size)
    target = hf.state_dict()
    with torch.no_grad():
        for k, v in target.items():
            if k in ours:
                v.copy_(ours[k])
            elif k.endswith(".bias"):  # a bias=False model: GPT-2 always has biases, zero is equivalent
                v.zero_()
    return hf


def qwen3_state_dict(model: GPT, vocab_size: int) -> dict[str, torch.Tensor]:
    """Qwen3ForCausalLM's state dict for our model; vocab_size crops padded embedding rows."""
    c, sd = model.config, model.state_dict()
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"][:vocab_size],
           "model.norm.weight": sd["transformer.ln_f.weight"],
           "lm_head.weight": sd["lm_head.weight"][:vocab_size]}
    for i in range(c.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        q, k, v = sd[ours + "attn.c_attn.weight"].split(c.n_embd)
        gate, up = sd[ours + "mlp.c_fc.weight"].split(c.mlp_hidden)
        out.update({theirs + "input_layernorm.weight": sd[ours + "ln_1.weight"],
                    theirs + "self_attn.q_proj.weight": q, theirs + "self_attn.k_proj.weight": k,
                    theirs + "self_attn.v_proj.weight": v, theirs + "self_attn.o_proj.weight": sd[ours + "attn.c_proj.weight"],
                    theirs + "self_attn.q_norm.weight": sd[ours + "attn.q_norm.weight"],
                    theirs + "self_attn.k_norm.weight": sd[ours + "attn.k_norm.weight"],
                    theirs + "post_attention_layernorm.weight": sd[ours + "ln_2.weight"],
                    theirs + "mlp.gate_proj.weight": gate, theirs + "mlp.up_proj.weight": up,
                    theirs + "mlp.down_proj.weight": sd[ours + "mlp.c_proj.weight"]})
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def qwen3_model(model: GPT, vocab_size: int, eot_id: int):
    """A Qwen3ForCausalLM with our weights: every head its own key/value head, no sliding window."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    c = model.config
    hf_config = Qwen3Config(vocab_size=vocab_size, hidden_size=c.n_embd, intermediate_size=c.mlp_hidden,
                            num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_head,
                            head_dim=c.head_size, hidden_act="silu", max_position_embeddings=c.block_size,
                            rms_norm_eps=1e-6, tie_word_embeddings=c.tie_embeddings, attention_bias=False,
                            attention_dropout=0.0, use_sliding_window=False, bos_token_id=eot_id, eos_token_id=eot_id,
                            rope_theta=c.rope_theta,
                            architectures=["Qwen3ForCausalLM"])
    hf = Qwen3ForCausalLM(hf_config)
    ours, target = qwen3_state_dict(model, vocab_size), hf.state_dict()
    if set(ours) != set(target):
        raise ValueError(f"Qwen3 weight names differ from ours: {sorted(set(ours) ^ set(target))[:6]}")
    with torch.no_grad():
        for k, v in target.items():
            v.copy_(ours[k])
    return hf


def write_gpt2_tokenizer(hf_dir: str) -> None:
    """GPT-2's vocab.json and merges.txt (tiktoken's encoder.json and vocab.bpe), plus tokenizer.json."""
    from transformers import GPT2TokenizerFast

    from fineweb_gpt import tokenizer
    files = tokenizer.gpt2_bpe_files()
    for hf_name, tiktoken_name in (("vocab.json", "encoder.json"), ("merges.txt", "vocab.bpe")):
        with open(os.path.join(hf_dir, hf_name), "wb") as f:
            f.write(files[tiktoken_name])
    tok = GPT2TokenizerFast(vocab=os.path.join(hf_dir, "vocab.json"), merges=os.path.join(hf_dir, "merges.txt"))
    tok.save_pretrained(hf_dir)
