"""Load a main Whisper model and its assistant from a hub id or a local directory.

Assistant kinds, as users have them:
- decoder-only (`distil-whisper/distil-large-v2`, or any `WhisperForCausalLM`): drafts from the
  main model's encoder states, so its cross-attention width must equal the main model's;
- full encoder-decoder (`openai/whisper-tiny` for `whisper-large-v2`): runs its own encoder on the
  same log-mel features, so the mel-bin count must match.
A full checkpoint whose encoder has the main model's shape is a distilled model (distil-whisper
copies and freezes the teacher's encoder) and shares the main encoder unless told otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoConfig,
    GenerationConfig,
    PreTrainedModel,
    WhisperConfig,
    WhisperForCausalLM,
    WhisperForConditionalGeneration,
    WhisperTokenizerFast,
)

__all__ = [
    "PRECISIONS",
    "AssistantEncoder",
    "LoadedModels",
    "check_compatible",
    "load_models",
    "make_tiny_models",
    "tiny_generation_config",
]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AssistantEncoder = Literal["auto", "shared", "own"]


@dataclass
class LoadedModels:
    main: WhisperForConditionalGeneration
    generation_config: GenerationConfig
    assistant: WhisperForCausalLM | WhisperForConditionalGeneration | None
    # True when the assistant runs its own encoder rather than reusing the main model's states.
    assistant_has_encoder: bool
    tokenizer: WhisperTokenizerFast | None
    # Token ids the assistant's output head is restricted to (`shortlist.json` beside its weights),
    # and per language where it has them: a batch of one language drafts from that language's own.
    assistant_shortlist: torch.Tensor | None = None
    assistant_language_shortlists: dict[str, torch.Tensor] = field(default_factory=dict)


def _encoder_shape(config: WhisperConfig) -> tuple[int, ...]:
    return (config.d_model, config.encoder_layers, config.encoder_attention_heads, config.num_mel_bins)


def _uses_own_encoder(main: WhisperConfig, assistant: WhisperConfig, mode: AssistantEncoder) -> bool:
    if "WhisperForCausalLM" in (assistant.architectures or []) or mode == "shared":
        return False
    return mode == "own" or _encoder_shape(assistant) != _encoder_shape(main)


def check_compatible(
    main: WhisperConfig,
    main_generation: GenerationConfig,
    assistant: WhisperConfig,
    assistant_generation: GenerationConfig | None,
    own_encoder: bool,
) -> None:
    """Raise ValueError when the assistant's drafts could not be verified by the main model."""
    if assistant.vocab_size != main.vocab_size:
        raise ValueError(
            f"assistant vocabulary has {assistant.vocab_size} tokens, main model {main.vocab_size}"
        )
    for name in ("decoder_start_token_id", "eos_token_id"):
        if getattr(assistant, name) != getattr(main, name):
            raise ValueError(
                f"assistant {name}={getattr(assistant, name)} differs from main {getattr(main, name)}"
            )
    if assistant_generation is not None:
        for name in ("no_timestamps_token_id", "lang_to_id", "task_to_id"):
            theirs, ours = getattr(assistant_generation, name, None), getattr(main_generation, name, None)
            if theirs is not None and ours is not None and theirs != ours:
                raise ValueError(f"assistant special tokens ({name}) differ from the main model's")
    if own_encoder and assistant.num_mel_bins != main.num_mel_bins:
        raise ValueError(
            f"assistant expects {assistant.num_mel_bins} mel bins, main model {main.num_mel_bins}"
        )
    if not own_encoder and assistant.d_model != main.d_model:
        raise ValueError(
            f"decoder-only assistant has hidden size {assistant.d_model} but the main encoder produces "
            f"{main.d_model}; use a full assistant with its own encoder"
        )


def _generation_config(source: str | Path) -> GenerationConfig | None:
    try:
        return GenerationConfig.from_pretrained(source)
    except OSError:
        return None


def load_models(
    main: str | Path,
    assistant: str | Path | None = None,
    precision: str = "fp32",
    device: str = "cpu",
    assistant_encoder: AssistantEncoder = "auto",
) -> LoadedModels:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    main_model = WhisperForConditionalGeneration.from_pretrained(main, dtype=dtype).to(device).eval()
    generation = main_model.generation_config
    assistant_model, own_encoder, shortlist, by_language = None, False, None, {}
    if assistant is not None:
        config = AutoConfig.from_pretrained(assistant)
        own_encoder = _uses_own_encoder(main_model.config, config, assistant_encoder)
        check_compatible(main_model.config, generation, config, _generation_config(assistant), own_encoder)
        kind = WhisperForConditionalGeneration if own_encoder else WhisperForCausalLM
        assistant_model = kind.from_pretrained(assistant, dtype=dtype).to(device).eval()
        shortlist, by_language = _load_shortlists(assistant)
    try:
        tokenizer = WhisperTokenizerFast.from_pretrained(main)
    except (OSError, ValueError, TypeError):
        tokenizer = None  # tiny test models carry no tokenizer; token ids still decode exactly
    return LoadedModels(
        main_model, generation, assistant_model, own_encoder, tokenizer, shortlist, by_language
    )


SHORTLIST_FILE = "shortlist.json"


def _load_shortlists(source: str | Path) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """The assistant keeps its full head on disk (transformers loads it as usual); the engine
    slices the head to the shortlist stored beside it, when there is one, or to its language's."""
    path = Path(source) / SHORTLIST_FILE
    if Path(source).is_dir() and not path.is_file():
        return None, {}
    if not path.is_file():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(str(source), SHORTLIST_FILE))
        except Exception:  # no such file on the hub, or no hub: the full head it is
            return None, {}
    stored = json.loads(path.read_text())

    def ids(tokens: list[int]) -> torch.Tensor:
        return torch.tensor(sorted(tokens), dtype=torch.long)

    return ids(stored["token_ids"]), {lang: ids(t) for lang, t in stored.get("by_language", {}).items()}


def _tiny_config(layers: int, d_model: int, **overrides: int) -> WhisperConfig:
    return WhisperConfig(
        vocab_size=51865,
        d_model=d_model,
        encoder_layers=overrides.pop("encoder_layers", 2),
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=50258,
        eos_token_id=50257,
        pad_token_id=50257,
        bos_token_id=50257,
        **overrides,
    )


def tiny_generation_config() -> GenerationConfig:
    """Multilingual Whisper's real special-token ids (a few languages suffice for tests)."""
    languages = ["en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt"]
    return GenerationConfig(
        decoder_start_token_id=50258,
        eos_token_id=50257,
        pad_token_id=50257,
        no_timestamps_token_id=50363,
        lang_to_id={f"<|{code}|>": 50259 + i for i, code in enumerate(languages)},
        task_to_id={"translate": 50358, "transcribe": 50359},
        is_multilingual=True,
        max_length=448,
        suppress_tokens=[
            1,
            2,
            7,
            8,
            9,
            10,
            14,
            25,
            26,
            27,
            28,
            29,
            31,
            58,
            59,
            60,
            61,
            62,
            63,
            90,
            91,
            92,
            93,
        ],
        begin_suppress_tokens=[220, 50257],
    )


def make_tiny_models(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Random-weight models with Whisper's real token ids, for fast tests: a main model, a
    decoder-only assistant and a full assistant with its own (narrower) encoder."""
    torch.manual_seed(seed)
    generation_config = tiny_generation_config()
    paths = {}
    models: dict[str, PreTrainedModel] = {
        "main": WhisperForConditionalGeneration(_tiny_config(layers=3, d_model=64)),
        "decoder_only": WhisperForCausalLM(_tiny_config(layers=1, d_model=64)),
        "full": WhisperForConditionalGeneration(_tiny_config(layers=1, d_model=32)),
    }
    for name, model in models.items():
        model.generation_config = generation_config
        paths[name] = out_dir / name
        model.save_pretrained(paths[name])
    return paths
