"""Long-form transcription as Whisper was trained to read long audio: sequential 30 s windows with
timestamps, each window starting where the last complete segment of the one before ended.

The batch layout of `chunking.py` decodes every window at once, but a window whose transcript ends
early loses the words only it covered. Here the next window starts at the last timestamp the model
wrote, so nothing is skipped; the price is that a recording's windows run one after another, at
batch 1, which is where speculative decoding gains most. The seeking follows transformers'
long-form `generate()` (greedy, `condition_on_prev_tokens=False`, no temperature fallback), and the
tokens are the same, window for window (tests/slow/test_exactness_long_form.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .audio import SAMPLE_RATE
from .features import HOP_LENGTH, N_FRAMES
from .types import DecodingOptions, DecodingStats

if TYPE_CHECKING:
    from .engine import SpeculativeWhisper

__all__ = ["LongTranscription", "SeekingWindows", "Segment", "split_segments", "transcribe_long"]

SECONDS_PER_STAMP = 0.02  # one timestamp step
FRAMES_PER_STAMP = 2  # mel frames (10 ms each) per timestamp step
FRAME_SECONDS = HOP_LENGTH / SAMPLE_RATE


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the recording
    end: float
    tokens: list[int]  # its timestamps included
    text: str = ""


@dataclass
class LongTranscription:
    text: str
    segments: list[Segment]
    language: str
    stats: DecodingStats  # summed over the windows
    windows: int = 0

    @property
    def tokens(self) -> list[int]:
        """Every segment's tokens in order, timestamps included."""
        return [t for s in self.segments for t in s.tokens]


class SeekingWindows:
    """One recording's sequential windows: where the next one starts, and the segments found so far.

    `next_window()` cuts the features of the next 30 s window (zero-padded past the end, as
    transformers pads them); `advance(tokens)` takes that window's decoded tokens, keeps its
    complete segments and seeks past them (`split_segments`)."""

    def __init__(self, features: torch.Tensor, timestamp_begin: int) -> None:
        self.features = features  # [n_mels, frames] of the whole recording (`LogMelSpectrogram.whole`)
        self.frames = features.shape[1]
        self.timestamp_begin = timestamp_begin
        self.seek = 0  # the first frame of the next window
        self.segments: list[Segment] = []
        self.windows: list[tuple[float, float]] = []  # seconds each decoded window covered

    @property
    def done(self) -> bool:
        return self.seek >= self.frames

    def next_window(self) -> tuple[torch.Tensor, int]:
        """`[n_mels, 3000]` features of the next window and the frames of audio in it."""
        count = min(N_FRAMES, self.frames - self.seek)
        part = self.features[:, self.seek : self.seek + count]
        return F.pad(part, (0, N_FRAMES - count)), count

    def advance(self, tokens: Sequence[int], text: Callable[[list[int]], str] | None = None) -> list[Segment]:
        """Record the window just decoded (end of text excluded) and seek on; its new segments, with
        their `text` when a detokenizer is given."""
        count = min(N_FRAMES, self.frames - self.seek)
        offset = self.seek * FRAME_SECONDS
        segments, advance = split_segments(tokens, self.timestamp_begin, offset, count)
        if text is not None:
            segments = [replace(s, text=text(s.tokens)) for s in segments]
        self.segments += segments
        self.windows.append((offset, offset + count * FRAME_SECONDS))
        self.seek += advance
        return segments

    @property
    def tokens(self) -> list[int]:
        return [t for s in self.segments for t in s.tokens]


def split_segments(
    tokens: Sequence[int], timestamp_begin: int, offset_s: float, window_frames: int
) -> tuple[list[Segment], int]:
    """One window's tokens (end of text excluded) as segments, and how many frames to seek ahead.

    A segment is the text between a pair of timestamps, `<|start|> text <|end|>`. If the window ends
    with a lone timestamp, the model saw its last segment through; the next window starts after this
    one. Otherwise the last segment may be cut off by the window's edge, so the next window starts
    at the last timestamp pair. Without any pair, the window is one segment and is skipped whole.
    """
    tokens = list(tokens)
    stamped = [t >= timestamp_begin for t in tokens]
    lone_ending = stamped[-2:] == [False, True]
    pairs = [i + 1 for i in range(len(tokens) - 1) if stamped[i] and stamped[i + 1]]
    if not pairs:
        stamps = [t for t in tokens if t >= timestamp_begin]
        end_steps = int(window_frames * FRAME_SECONDS / SECONDS_PER_STAMP)  # whole steps, as transformers
        if stamps and stamps[-1] != timestamp_begin:
            end_steps = stamps[-1] - timestamp_begin
        return [Segment(offset_s, offset_s + end_steps * SECONDS_PER_STAMP, tokens)], window_frames

    cuts = [*pairs, len(tokens)] if lone_ending else [*pairs[:-1], pairs[-1] + 1]
    segments, first = [], 0
    for n, cut in enumerate(cuts):
        piece = tokens[first:cut]
        closing = piece[-1] if n < len(cuts) - 1 or lone_ending else piece[-2]
        start, end = (offset_s + (t - timestamp_begin) * SECONDS_PER_STAMP for t in (piece[0], closing))
        segments.append(Segment(start, end, piece))
        first = cut
    if lone_ending:
        return segments, window_frames
    return segments, (tokens[first - 2] - timestamp_begin) * FRAMES_PER_STAMP


def transcribe_long(
    engine: SpeculativeWhisper, recordings: Sequence[np.ndarray], options: DecodingOptions
) -> list[LongTranscription]:
    """Transcribe 16 kHz recordings of any length. Each round encodes and decodes the next window of
    every recording not yet finished, as one batch. A recording's language, when not given, is
    detected from its first window and kept for the rest."""
    began = time.perf_counter()
    begin = engine.tokens.timestamp_begin
    seekers = [SeekingWindows(engine.features.whole(pcm), begin) for pcm in recordings]
    featured = time.perf_counter()
    options = replace(options, timestamps=True)
    languages: list[str | None] = [options.language] * len(seekers)
    stats: list[list[DecodingStats]] = [[] for _ in seekers]
    encoder_s = 0.0
    while active := [i for i, s in enumerate(seekers) if not s.done]:
        cut = [seekers[i].next_window() for i in active]
        encoding = time.perf_counter()
        encoded = engine.encode(torch.stack([mel for mel, _ in cut]), [n * HOP_LENGTH for _, n in cut])
        encoder_s += time.perf_counter() - encoding
        results = engine.decode(encoded, [replace(options, language=languages[i]) for i in active])
        for i, result in zip(active, results, strict=True):
            seekers[i].advance(result.tokens, engine.text)
            stats[i].append(result.stats)
            languages[i] = result.language
    features_s, total_s = featured - began, time.perf_counter() - began
    return [
        LongTranscription(
            engine.text(seeker.tokens),
            seeker.segments,
            language or "en",
            _summed(windows, features_s, encoder_s, total_s - features_s - encoder_s),
            len(windows),
        )
        for seeker, language, windows in zip(seekers, languages, stats, strict=True)
    ]


def _summed(
    stats: Sequence[DecodingStats], features_s: float, encoder_s: float, decode_s: float
) -> DecodingStats:
    """A recording's statistics over its windows; the times are its batch's, as the engine's are."""
    width = max((len(s.accept_counts) for s in stats), default=0)
    histogram = [sum(s.accept_counts[i] for s in stats if i < len(s.accept_counts)) for i in range(width)]
    return DecodingStats(
        drafted=sum(s.drafted for s in stats),
        accepted=sum(s.accepted for s in stats),
        main_passes=sum(s.main_passes for s in stats),
        accept_counts=histogram,
        features_s=features_s,
        encoder_s=encoder_s,
        decode_s=decode_s,
    )
