"""Options and results shared by the engine, the Triton models and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field

TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class DecodingOptions:
    # ISO 639-1 code such as "en"; None detects the language from the audio.
    language: str | None = None
    # "transcribe" keeps the spoken language, "translate" produces English.
    task: str = "transcribe"
    # False runs the main model alone (plain greedy); the output is identical either way.
    speculative: bool = True
    # Tokens the assistant drafts per main pass. None: the engine picks, every pass, the length with the
    # most expected tokens per second from its measured pass costs, the batch size and the acceptance so far.
    draft_length: int | None = None
    # With a draft_length: start there, grow by 2 after a fully accepted draft and shrink by 1 otherwise.
    adaptive_draft: bool = True
    # Upper bound on generated tokens, not counting the prompt; the decoder's 448 positions also bound
    # them, prompt included (444 after the 4-token prompt, 445 after the 3 of timestamp decoding).
    max_new_tokens: int = 445
    # Decode Whisper's timestamp tokens (`<|0.00|>` ... `<|30.00|>`) among the text, as it was trained to
    # (the prompt drops `<|notimestamps|>`); long-form transcription seeks on them.
    timestamps: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.draft_length is not None and not 0 <= self.draft_length <= 16:
            raise ValueError(f"draft_length must be in [0, 16], got {self.draft_length}")
        if not 1 <= self.max_new_tokens <= 445:
            raise ValueError(f"max_new_tokens must be in [1, 445], got {self.max_new_tokens}")


@dataclass
class DecodingStats:
    # Tokens the assistant proposed and tokens of those the main model kept.
    drafted: int = 0
    accepted: int = 0
    # Forward passes of the main decoder, prompt pass included.
    main_passes: int = 0
    # Histogram: accept_counts[n] is how many verify passes accepted exactly n draft tokens.
    accept_counts: list[int] = field(default_factory=list)
    features_s: float = 0.0
    encoder_s: float = 0.0
    decode_s: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


@dataclass
class Transcription:
    text: str
    # Generated tokens only: no prompt, no end-of-text.
    tokens: list[int]
    language: str
    stats: DecodingStats
