"""What a transcription request returns, and the readiness probe's answer."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["HealthStatus", "Segment", "TranscriptionResult"]


@dataclass(frozen=True)
class Segment:
    """A stretch of the transcript and the seconds of audio it came from: the part of a 30 s window
    that no neighbouring window covers (SEGMENT_TEXT, SEGMENT_TIMES). Window-level timing, not word
    timing: a cue, not a timestamp."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class TranscriptionResult:
    # The transcript (the server's TEXT output).
    text: str
    # Generated token ids over all windows, without special tokens (TOKENS).
    tokens: tuple[int, ...]
    # Language used for decoding: the requested one or the detected one (LANGUAGE_USED).
    language: str
    # Client-side round trip of the successful attempt, in seconds: the server's queueing,
    # batching and decoding plus the network, but neither local audio decoding nor retries.
    latency_s: float
    # Tokens the draft model proposed, and how many of them the main model accepted (STATS).
    drafted: int
    accepted: int
    # Forward passes of the main decoder; fewer passes per token is where the speed-up comes from.
    decoder_passes: int
    # (start, end) in seconds of each 30 s window the server decoded (WINDOWS); long audio is cut
    # into windows that overlap their neighbours, so one window may start before the last ends.
    windows: tuple[tuple[float, float], ...]
    # The transcript cut where the windows it was merged from meet, with their times (subtitle cues).
    segments: tuple[Segment, ...] = ()

    @property
    def acceptance_rate(self) -> float:
        """accepted / drafted; 0.0 when nothing was drafted (speculative decoding off)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, acceptance_rate included."""
        data = asdict(self)
        data["tokens"] = list(self.tokens)
        data["windows"] = [list(window) for window in self.windows]
        data["segments"] = [asdict(segment) for segment in self.segments]
        data["acceptance_rate"] = self.acceptance_rate
        return data


@dataclass(frozen=True)
class HealthStatus:
    server_live: bool
    server_ready: bool
    model_ready: bool
    # Why a probe failed (connection refused, unknown model, ...); None when every probe answered.
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.server_live and self.server_ready and self.model_ready
