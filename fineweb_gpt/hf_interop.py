"""GPT-2 and Hugging Face weights, in and out: OpenAI's GPT-2 checkpoints become our GPT, and our GPT
becomes a transformers model folder (export.py is the command line over this): GPT2LMHeadModel for
GPT-2's option set, Qwen3ForCausalLM for the modern option set that Qwen3 computes exactly (RoPE,
RMSNorm, per-head QK RMSNorm, SwiGLU, no biases, no logit softcap), and for every other option set
FinewebGPTForCausalLM: model.py itself, copied into the folder with the thin transformers wrapper in
fineweb_gpt/hf_remote/, loaded with trust_remote_code=True (so it computes what our model computes).

Our parameter names are GPT-2's, so the GPT-2 mapping is 1:1 except that GPT2LMHeadModel stores the
four block matrices as Conv1D, (in, out), transposed relative to nn.Linear. For Qwen3 the fused
c_attn splits into q/k/v_proj and the fused SwiGLU c_fc into gate_proj and up_proj. transformers and
tiktoken are imported inside the functions that need them.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, fields, replace

import torch

from fineweb_gpt.errors import UserError
import model as model_py
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
# Options every architecture serves at any value: sizes, dropout (off at inference), the initial weights only
# (init, zero_init_proj), the head tied or not, zero biases where the architecture has them, a RoPE base (Qwen3
# takes it; GPT-2 has none), and eot_token (it changes nothing unless doc_causal, which no architecture computes,
# is on). window_pattern as well while attn_window is 0 (no short window to place: see hf_architecture).
ANY_VALUE = {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "init", "zero_init_proj",
             "tie_embeddings", "bias", "rope_theta", "eot_token"}
# Every other option set: our own modeling code in the export folder (fineweb_gpt/hf_remote/ and model.py).
REMOTE_CODE = "FinewebGPTForCausalLM"
REMOTE_MODEL_TYPE = "fineweb_gpt"
REMOTE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_remote")
REMOTE_FILES = ("configuration_fineweb_gpt.py", "modeling_fineweb_gpt.py")
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
    options that keep each candidate out of reach. Options ARCHITECTURES does not name must be at GPTConfig's
    default (any option model.py gains later keeps a model off these architectures until mapped here)."""
    if not config.attn_window:  # without a short window the pattern places nothing
        config = replace(config, window_pattern=GPTConfig().window_pattern)
    misses = {arch: [f"{k}={getattr(config, k)!r} (needs {v!r})" for k, v in needs(arch).items()
                     if getattr(config, k) != v] for arch in ARCHITECTURES}
    for arch, missed in misses.items():
        if not missed:
            return arch
    raise ValueError("no transformers architecture computes this model's option set: "
                     + "; ".join(f"{arch} differs in {', '.join(m)}" for arch, m in misses.items()))


def needs(arch: str) -> dict:
    """Every GPTConfig option that changes what the model computes, with the value `arch` requires: its own
    (ARCHITECTURES) first, then GPTConfig's defaults for the rest."""
    defaults = {f.name: f.default for f in fields(GPTConfig) if f.name not in ANY_VALUE}
    return {**ARCHITECTURES[arch], **{k: v for k, v in defaults.items() if k not in ARCHITECTURES[arch]}}


def export_kind(config: GPTConfig) -> str:
    """What export writes: a transformers architecture's name, or REMOTE_CODE (our model.py in the folder)."""
    try:
        return hf_architecture(config)
    except ValueError:
        return REMOTE_CODE


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


def write_remote_code_model(model: GPT, vocab_size: int, eot_id: int, folder: str) -> None:
    """An export that transformers loads with trust_remote_code=True, for any option set: model.py copied byte
    for byte beside a configuration and a modeling file (fineweb_gpt/hf_remote/), config.json (GPTConfig's
    fields, vocab_size cropped) and model.safetensors (a tied head stored once, as the token embedding)."""
    config = replace(model.config, vocab_size=vocab_size)
    shutil.copyfile(model_py.__file__, os.path.join(folder, "model.py"))
    for name in REMOTE_FILES:
        shutil.copyfile(os.path.join(REMOTE_DIR, name), os.path.join(folder, name))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(remote_code_config(config, eot_id), f, indent=2)
        f.write("\n")
    from safetensors.torch import save_file
    save_file(remote_code_state_dict(model, config), os.path.join(folder, "model.safetensors"),
              metadata={"format": "pt"})


def remote_code_config(config: GPTConfig, eot_id: int) -> dict:
    """config.json of a remote-code export: what FinewebGPTConfig reads, and where transformers finds the code."""
    module = {name: name.removesuffix(".py") for name in REMOTE_FILES}
    return {**asdict(config), "model_type": REMOTE_MODEL_TYPE, "architectures": [REMOTE_CODE],
            "auto_map": {"AutoConfig": f"{module['configuration_fineweb_gpt.py']}.FinewebGPTConfig",
                         "AutoModelForCausalLM": f"{module['modeling_fineweb_gpt.py']}.{REMOTE_CODE}"},
            "tie_word_embeddings": config.tie_embeddings, "use_cache": False,
            "bos_token_id": eot_id, "eos_token_id": eot_id, "torch_dtype": "float32"}


def remote_code_state_dict(model: GPT, config: GPTConfig) -> dict[str, torch.Tensor]:
    """FinewebGPTForCausalLM's tensors for our model (prefix gpt.): every parameter and buffer, the buffers
    __init__ computes included, each cropped to the shape GPT(config) has (vocab_size rows), in fp32."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in tensors(GPT(config)).items()}
    out = {}
    for k, v in tensors(model).items():
        if k == "lm_head.weight" and config.tie_embeddings:
            continue  # the token embedding's tensor; the wrapper ties it back on load
        if v.shape != shapes[k]:
            if v.shape[1:] != shapes[k][1:] or v.shape[0] < shapes[k][0]:
                raise ValueError(f"{k}: {tuple(v.shape)} does not crop to {tuple(shapes[k])}")
            v = v[:shapes[k][0]]
        out["gpt." + k] = (v.float() if v.is_floating_point() else v).detach().contiguous().clone()
    return out


def tensors(model: GPT) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name, the non-persistent buffers (rotary tables) included."""
    return {**dict(model.named_buffers()), **model.state_dict()}
