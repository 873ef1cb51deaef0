"""Which tokenizer the data and the model use, and how it is loaded (tiktoken).

prepare.py records the tokenizer in meta.json; train.py copies that record into every checkpoint;
sample.py and export.py read it back. Shards without a meta.json (llm.c's, modded-nanogpt's) hold
GPT-2 tokens, so GPT-2 is the default everywhere.
"""
from __future__ import annotations

import numpy as np

from fineweb_gpt.errors import UserError

GPT2 = {"name": "gpt2", "vocab_size": 50257, "eot_id": 50256}

# tiktoken's own download locations of the GPT-2 BPE files; tiktoken caches them (TIKTOKEN_CACHE_DIR)
GPT2_BPE_URLS = {
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
}
OFFLINE_HINT = ("tiktoken downloads it on first use: check your connection, or point TIKTOKEN_CACHE_DIR at a "
                "folder holding its files (README: Offline)")


class TokenizerError(UserError):
    """The tokenizer cannot be loaded; the message says what to do."""


def describe(meta: dict | None) -> dict:
    """The tokenizer record {name, vocab_size, eot_id} of a meta.json or checkpoint (GPT-2 where absent)."""
    meta = meta or {}
    name = meta.get("tokenizer", meta.get("name", GPT2["name"]))
    return {"name": name, "eot_id": meta.get("eot_id", GPT2["eot_id"]),
            "vocab_size": meta.get("vocab_size", GPT2["vocab_size"])}


def load_encoding(name: str):
    """tiktoken's encoding `name`, with an error that says why it could not be had."""
    import tiktoken
    try:
        return tiktoken.get_encoding(name)
    except ValueError as e:  # tiktoken's answer for an unknown name
        raise TokenizerError(f"unknown tokenizer {name!r}: {e}") from None
    except Exception as e:  # the BPE file could not be downloaded or read
        raise TokenizerError(f"could not load the tokenizer {name!r} ({type(e).__name__}: {e}); {OFFLINE_HINT}") from None


def token_byte_lengths(name: str) -> np.ndarray:
    """UTF-8 bytes of every token id of tiktoken's encoding `name`: (n_vocab,) int64.

    Byte-level BPE tokens concatenate to exactly the bytes of the text they encode, so summing these
    over a run of tokens counts that text's bytes (for bits per byte). Special tokens (GPT-2's
    <|endoftext|>) count 0: prepare.py appends one after every document, it stands for no text.
    """
    enc = load_encoding(name)
    special = {enc.encode_single_token(s) for s in enc.special_tokens_set}
    lengths = np.zeros(enc.n_vocab, dtype=np.int64)
    for i in range(enc.n_vocab):
        if i not in special:
            try:
                lengths[i] = len(enc.decode_single_token_bytes(i))
            except KeyError:  # an unused id inside the vocabulary's range: no text
                pass
    return lengths


def gpt2_bpe_files() -> dict[str, bytes]:
    """GPT-2's encoder.json and vocab.bpe, from tiktoken's cache (downloaded if absent)."""
    from tiktoken.load import read_file_cached
    try:
        return {name: read_file_cached(url) for name, url in GPT2_BPE_URLS.items()}
    except Exception as e:  # offline and not cached
        raise TokenizerError(f"{type(e).__name__}: {str(e)[:200]}; {OFFLINE_HINT}") from None
