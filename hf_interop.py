"""GPT-2 and Hugging Face weights, in and out: OpenAI's GPT-2 checkpoints become our GPT, and our GPT
becomes a transformers GPT2LMHeadModel folder (export.py is the command line over this).

Our parameter names are GPT-2's, so the mapping is 1:1 except that GPT2LMHeadModel stores the four
block matrices as Conv1D, (in, out), transposed relative to nn.Linear. transformers and tiktoken
are imported inside the functions that need them.
"""
from __future__ import annotations

import os

import torch

from model import GPT, GPTConfig

GPT2_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def from_pretrained(model_type: str, dropout: float = 0.0) -> GPT:
    """OpenAI's GPT-2 weights (gpt2, gpt2-medium, gpt2-large, gpt2-xl), downloaded by transformers."""
    if model_type not in GPT2_MODELS:
        raise ValueError(f"unknown GPT-2 model {model_type!r}: use {', '.join(GPT2_MODELS)}")
    from transformers import GPT2LMHeadModel
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(model_type)
    except OSError as e:
        raise ValueError(f"could not load {model_type} through transformers ({str(e).splitlines()[0][:200]}); the "
                         f"weights are downloaded from Hugging Face on first use: check your connection") from None
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


def to_hf_model(model: GPT, vocab_size: int, eot_id: int = 50256):
    """A transformers GPT2LMHeadModel with our weights (biases are zero if the model has none)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    c = model.config
    hf_config = GPT2Config(vocab_size=vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                           n_head=c.n_head, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                           attn_pdrop=0.0, layer_norm_epsilon=1e-5, bos_token_id=eot_id, eos_token_id=eot_id,
                           tie_word_embeddings=True, architectures=["GPT2LMHeadModel"])
    hf = GPT2LMHeadModel(hf_config)
    ours = to_hf_state_dict(model, vocab_size)
    target = hf.state_dict()
    with torch.no_grad():
        for k, v in target.items():
            if k in ours:
                v.copy_(ours[k])
            elif k.endswith(".bias"):  # a bias=False model: GPT-2 always has biases, zero is equivalent
                v.zero_()
    return hf.eval()


def write_gpt2_tokenizer(hf_dir: str) -> None:
    """GPT-2's vocab.json and merges.txt (tiktoken's encoder.json and vocab.bpe), plus tokenizer.json."""
    from transformers import GPT2TokenizerFast

    import tokenizer
    files = tokenizer.gpt2_bpe_files()
    for hf_name, tiktoken_name in (("vocab.json", "encoder.json"), ("merges.txt", "vocab.bpe")):
        with open(os.path.join(hf_dir, hf_name), "wb") as f:
            f.write(files[tiktoken_name])
    tok = GPT2TokenizerFast(vocab=os.path.join(hf_dir, "vocab.json"), merges=os.path.join(hf_dir, "merges.txt"))
    tok.save_pretrained(hf_dir)
