"""An exported fineweb-gpt model as a transformers causal LM: a thin wrapper whose forward is model.py's
GPT.forward (model.py is copied byte for byte beside this file), so the logits are the trained model's.
Loaded with AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).

generate() works without a KV cache: each step runs the whole sequence again (correct for every option
set, O(T^2) per token); prompts must be unpadded, and prompt plus new tokens must fit in block_size. An
attention_mask may only mark right padding (scoring padded batches): left padding is refused."""
from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_fineweb_gpt import FinewebGPTConfig
from .model import GPT


class FinewebGPTForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = FinewebGPTConfig
    base_model_prefix = "gpt"
    # a tied head is stored once, as the token embedding (transformers 5 reads the mapping, 4 its keys)
    _tied_weights_keys = {"gpt.lm_head.weight": "gpt.transformer.wte.weight"}

    def __init__(self, config: FinewebGPTConfig):
        super().__init__(config)
        self.gpt = GPT(config.gpt_config())
        for module in self.gpt.modules():  # buffers computed in __init__ (rotary tables) are stored with the
            module._non_persistent_buffers_set.clear()  # weights: loading on the meta device skips __init__'s values
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Every tensor comes from model.safetensors (GPT.init_weights set the untrained values)."""

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.gpt.transformer.wte

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.gpt.lm_head

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, **kwargs) -> CausalLMOutputWithPast:
        """Logits (B, T, vocab) of GPT.forward; with labels (-100 = ignore), the next-token cross-entropy."""
        if attention_mask is not None and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
            raise ValueError("this model has no padding tokens: a padded position may only follow the real ones "
                             "(right padding, which causal attention never sees); pass prompts of equal length "
                             "unpadded, e.g. one prompt at a time")
        logits, _ = self.gpt(input_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                                      **kwargs) -> dict:
        """The whole sequence at every step (no KV cache)."""
        return {"input_ids": input_ids, "attention_mask": attention_mask}
