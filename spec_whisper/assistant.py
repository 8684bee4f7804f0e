"""Make a decoder-only assistant from a main model, the distil-whisper way.

The assistant keeps the main model's token and position embeddings and copies a few of its
decoder layers (the first and the last by default); it reads the main encoder's states, so it
needs no encoder of its own. Untrained it agrees with the main model only rarely: distillation
(`scripts/distil_assistant.py`) is what makes it a useful drafter.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import WhisperForCausalLM, WhisperForConditionalGeneration

__all__ = ["init_assistant_from_main"]


def init_assistant_from_main(
    main_dir: str | Path, out_dir: str | Path, layers: tuple[int, ...] = (0, -1)
) -> Path:
    main = WhisperForConditionalGeneration.from_pretrained(main_dir, dtype=torch.float32)
    config = copy.deepcopy(main.config)
    config.decoder_layers = len(layers)
    config.architectures = ["WhisperForCausalLM"]
    assistant = WhisperForCausalLM(config).eval()
    source = main.model.decoder
    target = assistant.model.decoder
    target.embed_tokens.load_state_dict(source.embed_tokens.state_dict())
    target.embed_positions.load_state_dict(source.embed_positions.state_dict())
    target.layer_norm.load_state_dict(source.layer_norm.state_dict())
    for slot, index in enumerate(layers):
        target.layers[slot].load_state_dict(source.layers[index].state_dict())
    assistant.tie_weights()
    assistant.generation_config = main.generation_config
    out = Path(out_dir)
    assistant.save_pretrained(out)
    return out
