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

import tokenizer
from checkpoint import CheckpointError, load_model, resolve
from configurator import cli, key
from hf_interop import to_hf_model, write_gpt2_tokenizer


@dataclass
class ExportConfig:
    out_dir: str = key("out-fineweb", "run directory holding the checkpoint")
    ckpt: str = key("latest", "'latest', 'best' or a checkpoint file path")
    hf_dir: str = key("hf-model", "folder to write the Hugging Face model into")
    tokenizer_files: bool = key(True, "also write the GPT-2 tokenizer files (downloaded by tiktoken if not cached)")


def export(cfg: ExportConfig) -> str:
    model, ckpt = load_model(resolve(cfg.out_dir, cfg.ckpt))
    tok_record = tokenizer.describe(ckpt.get("tokenizer"))
    vocab = min(tok_record["vocab_size"], model.config.vocab_size)
    os.makedirs(cfg.hf_dir, exist_ok=True)
    to_hf_model(model, vocab, tok_record["eot_id"]).save_pretrained(cfg.hf_dir)
    if cfg.tokenizer_files and tok_record["name"] == tokenizer.GPT2["name"]:
        try:
            write_gpt2_tokenizer(cfg.hf_dir)
        except Exception as e:  # offline and not cached: the weights are still usable
            print(f"warning: GPT-2 tokenizer files not written ({type(e).__name__}: {e}); load the tokenizer with "
                  f"AutoTokenizer.from_pretrained('gpt2') instead", file=sys.stderr)
    elif cfg.tokenizer_files:
        print(f"note: tokenizer {tok_record['name']} has no Hugging Face files here; only the model was written",
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
