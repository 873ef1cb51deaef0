"""Export a trained checkpoint as a Hugging Face GPT-2 model folder.

    python export.py --out_dir=out-fineweb --hf_dir=hf-model
    python -c "from transformers import pipeline; print(pipeline('text-generation', 'hf-model')('Hello')[0])"

Writes what transformers.AutoModelForCausalLM.from_pretrained(hf_dir) loads as GPT2LMHeadModel:
config.json and model.safetensors (the tied embedding is stored once), plus the GPT-2 tokenizer
files when the model was trained with tiktoken's gpt2 encoding. Embedding rows added to pad the
vocabulary (50304) are dropped so the model's vocabulary matches the tokenizer's (50257).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

from checkpoint import CheckpointError, load_model, resolve
from configurator import cli, key
from model import GPT, to_hf_state_dict

GPT2_BPE_URLS = {  # tiktoken's own download locations: served from its cache when already fetched
    "vocab.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    "merges.txt": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
}


@dataclass
class ExportConfig:
    out_dir: str = key("out-fineweb", "run directory holding the checkpoint")
    ckpt: str = key("latest", "'latest', 'best' or a checkpoint file path")
    hf_dir: str = key("hf-model", "folder to write the Hugging Face model into")
    tokenizer_files: bool = key(True, "also write the GPT-2 tokenizer files (downloaded by tiktoken if not cached)")


def to_hf_model(model: GPT, vocab_size: int):
    """A transformers GPT2LMHeadModel with our weights (biases are zero if the model has none)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    c = model.config
    hf_config = GPT2Config(vocab_size=vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                           n_head=c.n_head, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                           attn_pdrop=0.0, layer_norm_epsilon=1e-5, bos_token_id=50256, eos_token_id=50256,
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
    from tiktoken.load import read_file_cached
    from transformers import GPT2TokenizerFast
    for name, url in GPT2_BPE_URLS.items():
        with open(os.path.join(hf_dir, name), "wb") as f:
            f.write(read_file_cached(url))
    tok = GPT2TokenizerFast(vocab=os.path.join(hf_dir, "vocab.json"), merges=os.path.join(hf_dir, "merges.txt"))
    tok.save_pretrained(hf_dir)


def export(cfg: ExportConfig) -> str:
    model, ckpt = load_model(resolve(cfg.out_dir, cfg.ckpt))
    tokenizer = ckpt.get("tokenizer", {"name": "gpt2", "vocab_size": 50257})
    vocab = min(tokenizer.get("vocab_size", model.config.vocab_size), model.config.vocab_size)
    os.makedirs(cfg.hf_dir, exist_ok=True)
    to_hf_model(model, vocab).save_pretrained(cfg.hf_dir)
    if cfg.tokenizer_files and tokenizer.get("name") == "gpt2":
        try:
            write_gpt2_tokenizer(cfg.hf_dir)
        except Exception as e:  # offline and not cached: the weights are still usable
            print(f"warning: GPT-2 tokenizer files not written ({type(e).__name__}: {e}); load the tokenizer with "
                  f"AutoTokenizer.from_pretrained('gpt2') instead", file=sys.stderr)
    elif cfg.tokenizer_files:
        print(f"note: tokenizer {tokenizer.get('name')} has no Hugging Face files here; only the model was written",
              file=sys.stderr)
    print(f"wrote {cfg.hf_dir}: GPT2LMHeadModel, {model.num_params()['total'] / 1e6:.1f}M parameters, vocab {vocab}, "
          f"from step {ckpt.get('step')} of {cfg.out_dir}")
    return cfg.hf_dir


def main(argv: list[str] | None = None) -> None:
    cfg = cli(ExportConfig, "export.py", argv)
    try:
        export(cfg)
    except CheckpointError as e:
        sys.exit(f"export.py: error: {e}")


if __name__ == "__main__":
    main()
