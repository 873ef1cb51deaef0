"""The transformers configuration of an exported fineweb-gpt model: GPTConfig's fields (model.py, copied
beside this file) as top-level keys of config.json, so it covers whatever options model.py has.
Loaded through config.json's auto_map with trust_remote_code=True."""
from __future__ import annotations

from dataclasses import MISSING, fields

from transformers import PretrainedConfig

from .model import GPTConfig


class FinewebGPTConfig(PretrainedConfig):
    model_type = "fineweb_gpt"
    # the names transformers' generic code reads (hidden_size, num_hidden_layers, ...) for GPTConfig's
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
                     "max_position_embeddings": "block_size"}

    def __init__(self, **kwargs):
        for f in fields(GPTConfig):  # a key config.json lacks takes GPTConfig's default
            default = f.default if f.default is not MISSING else f.default_factory()
            setattr(self, f.name, kwargs.pop(f.name, default))
        kwargs.setdefault("tie_word_embeddings", self.tie_embeddings)
        kwargs.setdefault("use_cache", False)  # the model recomputes the whole context at each step
        super().__init__(**kwargs)

    def gpt_config(self) -> GPTConfig:
        return GPTConfig(**{f.name: getattr(self, f.name) for f in fields(GPTConfig)})
