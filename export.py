"""Export a trained checkpoint as a Hugging Face model folder: GPT-2, Qwen3, or our own modeling code.

    python export.py --out_dir=out-fineweb --hf_dir=hf-model
    python -c "from transformers import pipeline; print(pipeline('text-generation', 'hf-model')('Hello')[0])"

Writes what transformers.AutoModelForCausalLM.from_pretrained(hf_dir) loads, one of three kinds:
GPT2LMHeadModel for GPT-2's option set, Qwen3ForCausalLM for rope + rmsnorm + qk_norm + swiglu without
biases or softcap, and for every other option set FinewebGPTForCausalLM: model.py copied into the folder
with a small configuration and modeling file, loaded with trust_remote_code=True. Each folder holds
config.json and model.safetensors (a tied embedding is stored once), plus the GPT-2 tokenizer files when
the model was trained with tiktoken's gpt2 encoding. Embedding rows added to pad the vocabulary (50304)
are dropped so the model's vocabulary matches the tokenizer's (50257). The run prints which kind it wrote.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import partial
from typing import Callable

from fineweb_gpt import runlock, tokenizer
from fineweb_gpt.atomic import find_os_error, os_error_reason, staged_dir
from configurator import key, run_main
from fineweb_gpt.checkpoint import BEST, LATEST
from fineweb_gpt.errors import UserError
from fineweb_gpt.runlog import METRICS
from fineweb_gpt.hf_interop import REMOTE_CODE, export_kind, to_hf_model, write_gpt2_tokenizer, write_remote_code_model
from fineweb_gpt.inference import load_for_inference


@dataclass
class ExportConfig:
    out_dir: str = key("out-fineweb", "run directory holding the checkpoint")
    ckpt: str = key("latest", "'latest', 'best' or a checkpoint file path")
    hf_dir: str = key("hf-model", "folder to write the Hugging Face model into (new or empty, unless overwrite)")
    tokenizer_files: bool = key(True, "also write the GPT-2 tokenizer files (downloaded by tiktoken if not cached)")
    overwrite: bool = key(False, "write into a non-empty hf_dir, replacing the files an export writes")


class ExportError(UserError):
    """The export cannot be written where asked; the message says why and what to do."""


try:  # safetensors reports a failed write with its own exception type
    from safetensors import SafetensorError
    WRITE_ERRORS: tuple = (SafetensorError,)
except ImportError:
    WRITE_ERRORS = ()
RUN_FILES = (LATEST, BEST, METRICS)  # what marks a training run's out_dir


def check_target(hf_dir: str, overwrite: bool) -> None:
    """hf_dir must be a new or empty folder; a training run's folder never, another folder only if asked."""
    if os.path.exists(hf_dir) and not os.path.isdir(hf_dir):
        raise ExportError(f"--hf_dir={hf_dir} is a file; name a folder (it is created if missing)")
    present = sorted(set(os.listdir(hf_dir)) - {runlock.LOCK_NAME}) if os.path.isdir(hf_dir) else []
    run = [f for f in RUN_FILES if f in present]
    if run:
        raise ExportError(f"--hf_dir={hf_dir} holds a training run ({', '.join(run)}); the export's config.json "
                          f"would replace the run's: choose another --hf_dir")
    if present and not overwrite:
        raise ExportError(f"--hf_dir={hf_dir} is not empty ({len(present)} entries, e.g. {present[:3]}); choose a "
                          f"new folder, or pass --overwrite=True to replace the files an export writes there")


def write_files(write_model: Callable[[str], None], tok_record: dict, tokenizer_files: bool, folder: str) -> None:
    """The export's files: the model's (config.json, model.safetensors, and the code of a remote-code export),
    and the tokenizer's where it has them."""
    write_model(folder)
    if tokenizer_files and tok_record["name"] == tokenizer.GPT2["name"]:
        try:
            write_gpt2_tokenizer(folder)
        except tokenizer.TokenizerError as e:  # offline and not cached: the weights are still usable
            print(f"warning: GPT-2 tokenizer files not written ({e}); load the tokenizer with "
                  f"AutoTokenizer.from_pretrained('gpt2') instead", file=sys.stderr)
    elif tokenizer_files:
        print(f"note: tokenizer {tok_record['name']} has no Hugging Face files here; only the model was written",
              file=sys.stderr)
    mode = plain_file_mode()
    for name in os.listdir(folder):  # safetensors writes 0600; the other files get the umask's mode (0644)
        os.chmod(os.path.join(folder, name), mode)


def model_writer(model, vocab_size: int, eot_id: int) -> Callable[[str], None]:
    """What writes the model's files into a folder: a transformers architecture's config.json and weights, or,
    for an option set none computes, those of our own modeling code and the code itself (export_kind)."""
    if export_kind(model.config) == REMOTE_CODE:
        return partial(write_remote_code_model, model, vocab_size, eot_id)
    return to_hf_model(model, vocab_size, eot_id).save_pretrained


def plain_file_mode() -> int:
    """The mode a newly created file gets here (0644 under the usual umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def export(cfg: ExportConfig) -> str:
    with runlock.hold(cfg.hf_dir, f"--hf_dir={cfg.hf_dir}", ExportError):  # one export into a folder at a time
        return write_export(cfg)


def write_export(cfg: ExportConfig) -> str:
    check_target(cfg.hf_dir, cfg.overwrite)
    loaded = load_for_inference(cfg.out_dir, cfg.ckpt)
    model, tok_record = loaded.model, loaded.tokenizer
    kind = export_kind(model.config)
    vocab, eot = min(tok_record["vocab_size"], model.config.vocab_size), tok_record["eot_id"]
    write_model = model_writer(model, vocab, eot)
    parent = os.path.dirname(os.path.abspath(cfg.hf_dir))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot write into --hf_dir={cfg.hf_dir}: its parent folder {parent} could not be "
                          f"created ({os_error_reason(e)})") from e
    try:  # written into a staging folder beside hf_dir, then moved in file by file: never half an export
        with staged_dir(cfg.hf_dir, prefix=".export-") as staging:
            write_files(write_model, tok_record, cfg.tokenizer_files, staging)
    except (OSError, *WRITE_ERRORS) as e:  # a full disk, a read-only folder: each library says it its way
        if not isinstance(e, OSError) and find_os_error(e) is None and "os error" not in str(e):
            raise  # safetensors failing for another reason than the system's: a bug, with its traceback
        raise ExportError(f"could not write the export into --hf_dir={cfg.hf_dir} ({os_error_reason(e)})") from e
    source = f"step {loaded.step} of {cfg.out_dir}" if loaded.step is not None else cfg.out_dir
    print(f"wrote {cfg.hf_dir}: {describe_kind(kind)}, {model.num_params()['total'] / 1e6:.1f}M parameters, "
          f"vocab {vocab}, from {source}")
    remote = ", trust_remote_code=True" if kind == REMOTE_CODE else ""
    print(f"load it with transformers.AutoModelForCausalLM.from_pretrained({cfg.hf_dir!r}{remote})")
    return cfg.hf_dir


def describe_kind(kind: str) -> str:
    """Which kind of export was written: a transformers architecture, or our modeling code in the folder."""
    if kind == REMOTE_CODE:
        return f"{kind} (this project's model.py in the folder: no transformers architecture computes this option set)"
    return f"{kind} (transformers' own architecture)"


def main(argv: list[str] | None = None) -> None:
    run_main(ExportConfig, "export.py", export, argv)


if __name__ == "__main__":
    main()
