"""One loader for every script that runs a trained model (sample.py, eval.py, export.py): a checkpoint
of a run directory, or OpenAI's GPT-2 from the Hugging Face Hub, with the tokenizer its tokens mean."""
from __future__ import annotations

from dataclasses import dataclass

from fineweb_gpt import tokenizer
from fineweb_gpt.checkpoint import CheckpointError, load_model, resolve
from fineweb_gpt.hf_interop import GPT2_MODELS, from_pretrained
from model import GPT


@dataclass
class TrainedModel:
    model: GPT         # in eval mode, on CPU
    tokenizer: dict    # tokenizer.describe's record: name, vocab_size, eot_id
    step: int | None   # the checkpoint's step; None for OpenAI's GPT-2


def load_for_inference(out_dir: str, ckpt: str = "latest", init_from: str = "resume") -> TrainedModel:
    """init_from: 'resume' loads checkpoint `ckpt` ('latest', 'best' or a path) of out_dir; gpt2,
    gpt2-medium, gpt2-large or gpt2-xl loads OpenAI's weights. A checkpoint that records no tokenizer
    is decoded as GPT-2, so one whose vocabulary is smaller than GPT-2's is refused."""
    if init_from in GPT2_MODELS:
        return TrainedModel(from_pretrained(init_from).eval(), tokenizer.describe(None), None)
    path = resolve(out_dir, ckpt)
    model, saved = load_model(path)
    if "tokenizer" not in saved and model.config.vocab_size < tokenizer.GPT2["vocab_size"]:
        raise CheckpointError(f"{path} records no tokenizer and its model has {model.config.vocab_size} embeddings, "
                              f"fewer than GPT-2's {tokenizer.GPT2['vocab_size']} tokens (a character-level model from "
                              f"another trainer?); a checkpoint is decoded with the tokenizer it records, else GPT-2's")
    step = saved.get("loop", {}).get("step")
    full_window = saved["model_args"].get("attn_window", 0)  # 0: a checkpoint from before windows existed
    if model.config.attn_window != full_window:
        print(f"attention: step {step} of the window warmup: the short window is {model.config.attn_window} tokens "
              f"(attn_window={full_window} once the warmup ends), as when this checkpoint's val loss was measured")
    return TrainedModel(model, tokenizer.describe(saved.get("tokenizer")), step)
