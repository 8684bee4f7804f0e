"""Whisper's special tokens and decoder prompt, read from a model's generation config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SpecialTokens"]


@dataclass(frozen=True)
class SpecialTokens:
    start_of_transcript: int
    end_of_text: int
    no_timestamps: int
    # ISO 639-1 code -> token id; empty for English-only models.
    languages: dict[str, int]
    # "transcribe"/"translate" -> token id; empty for English-only models.
    tasks: dict[str, int]
    # Never generated (symbols Whisper was trained to avoid).
    suppress: tuple[int, ...]
    # Never the first generated token (blank, end-of-text).
    begin_suppress: tuple[int, ...]
    # The most 0.02 s steps the first timestamp may be (50: 1 s), or None.
    max_initial_timestamp: int | None = None

    @classmethod
    def from_generation_config(cls, config: Any) -> SpecialTokens:
        lang_to_id = getattr(config, "lang_to_id", None) or {}
        return cls(
            start_of_transcript=config.decoder_start_token_id,
            end_of_text=config.eos_token_id,
            no_timestamps=config.no_timestamps_token_id,
            languages={code.strip("<|>"): i for code, i in lang_to_id.items()},
            tasks=dict(getattr(config, "task_to_id", None) or {}),
            suppress=tuple(getattr(config, "suppress_tokens", None) or ()),
            begin_suppress=tuple(getattr(config, "begin_suppress_tokens", None) or ()),
            max_initial_timestamp=getattr(config, "max_initial_timestamp_index", None),
        )

    @property
    def timestamp_begin(self) -> int:
        """`<|0.00|>`; the timestamps follow it in 0.02 s steps up to `<|30.00|>`."""
        return self.no_timestamps + 1

    @property
    def multilingual(self) -> bool:
        return bool(self.languages)

    def check_language(self, language: str | None) -> None:
        if language is None:
            return
        if not self.multilingual:
            if language != "en":
                raise ValueError(f"unknown language {language!r}: this model is English-only")
            return
        if language not in self.languages:
            raise ValueError(
                f"unknown language {language!r}; expected an ISO 639-1 code such as 'en' or 'de'"
            )

    def text(self, tokenizer: Any, tokens: list[int]) -> str:
        """The words of `tokens` through `tokenizer`, special tokens and timestamps left out (the old
        tokenizer.json of a converted model does not know the timestamps)."""
        words = [t for t in tokens if t < self.timestamp_begin]
        return tokenizer.decode(words, skip_special_tokens=True).strip()

    def language_of(self, token: int) -> str:
        return next((code for code, i in self.languages.items() if i == token), "en")

    def prompt(self, language: str, task: str, timestamps: bool = False) -> list[int]:
        """`<|startoftranscript|><|lang|><|task|><|notimestamps|>` (no language/task if English-only;
        no `<|notimestamps|>` when decoding timestamps)."""
        ending = [] if timestamps else [self.no_timestamps]
        if not self.multilingual:
            return [self.start_of_transcript, *ending]
        self.check_language(language)
        return [self.start_of_transcript, self.languages[language], self.tasks[task], *ending]
