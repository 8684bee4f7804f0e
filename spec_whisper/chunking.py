"""Long-form audio: cut it into overlapping 30 s windows and stitch the per-window tokens back together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spec_whisper.audio import SAMPLE_RATE

__all__ = ["Window", "merge_segments", "merge_windows", "split_windows"]

# Fewer agreeing tokens in a row than this is too weak to call an overlap: a shared " the" or ", and" proves
# nothing (on the 203 s long-form clip a 2-token ", and" match joined two windows 30 words apart).
MIN_AGREEMENT = 3


@dataclass(frozen=True)
class Window:
    """One window of the audio, in samples: audio[start:end].

    stride_left/stride_right are the samples at each edge that the neighbouring window also covers (0 at the
    ends of the audio). The middle, [start + stride_left, end - stride_right), belongs to this window alone,
    and these middles tile the whole audio.
    """

    start: int
    end: int
    stride_left: int
    stride_right: int

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def own(self) -> tuple[int, int]:
        """The samples only this window covers: [start + stride_left, end - stride_right)."""
        return self.start + self.stride_left, self.end - self.stride_right


def split_windows(
    samples: np.ndarray,
    window_s: float = 30.0,
    stride_s: float | tuple[float, float] = (5.0, 5.0),
    sample_rate: int = SAMPLE_RATE,
) -> list[Window]:
    """Cut audio into windows of `window_s` that overlap their neighbours by `stride_s` (left, right) seconds.

    Consecutive windows start `window_s - left - right` seconds apart, so with the defaults (30 s windows,
    5 s strides) each window shares 10 s with the next: the layout of the transformers ASR pipeline with
    chunk_length_s=30, stride_length_s=5. The last window ends at the end of the audio and may be short.
    Audio no longer than one window is a single window with no strides; empty audio gives no windows.
    """
    left_s, right_s = (stride_s, stride_s) if isinstance(stride_s, (int, float)) else stride_s
    size, left, right = (round(s * sample_rate) for s in (window_s, left_s, right_s))
    if size <= 0 or left < 0 or right < 0 or left + right >= size:
        raise ValueError(
            f"need 0 <= strides and left + right < window; got window {window_s}, stride {stride_s}"
        )
    total, step = len(samples), size - left - right

    windows: list[Window] = []
    start = 0
    while start < total:
        end = min(start + size, total)
        last = end == total
        windows.append(Window(start, end, left if start else 0, 0 if last else right))
        if last:
            break
        start += step
    return windows


def merge_windows(token_lists: Sequence[Sequence[int]], windows: Sequence[Window]) -> list[int]:
    """The merged tokens of `merge_segments`, as one sequence."""
    return [t for _, tokens in merge_segments(token_lists, windows) for t in tokens]


def merge_segments(
    token_lists: Sequence[Sequence[int]], windows: Sequence[Window]
) -> list[tuple[int, list[int]]]:
    """(window index, tokens) runs that make up the merged sequence, in order: which window each stretch
    of the transcript came from, for cues timed by their window until timestamp tokens exist.

    Join the text tokens decoded from each window into one sequence, dropping what the overlaps repeat.

    Pass text tokens only: timestamp tokens are relative to each window and would never agree across a seam.

    Approach. The end of one window's tokens and the start of the next's transcribe the same stretch of audio,
    but the words cut at either window edge come out garbled or missing. So, as the transformers pipeline's
    stride merging does, slide the next sequence along the end of the previous one: for every overlap length
    k, compare prev[-k:] with next[:k] position by position. The best k is the one with the longest run of
    agreeing tokens (ties: more agreeing tokens overall, then the shorter overlap). The seam goes in the
    middle of that run, where both windows agree and are farthest from their cut edges: the previous
    sequence is kept up to that point and the next one from there on, so the agreed tokens appear once and
    the garbled edges of both windows are dropped.

    If no alignment has a run of at least MIN_AGREEMENT tokens, or the two windows do not overlap in the
    audio (e.g. the window in between decoded to nothing), the sequences are simply concatenated: a
    possible duplicate is better than silently losing words. Empty windows are skipped.
    """
    if len(token_lists) != len(windows):
        raise ValueError(f"got {len(token_lists)} token lists for {len(windows)} windows")
    merged: list[int] = []
    owners: list[int] = []  # the window each merged token came from
    previous: Window | None = None
    previous_count = 0  # tokens the last non-empty window decoded
    for index, (tokens, window) in enumerate(zip(token_lists, windows, strict=True)):
        tokens = list(tokens)
        if not tokens:
            continue
        kept, skip = len(merged), 0
        if previous is not None and previous.end > window.start:
            # The overlap lies inside the previous window's audio, so it spans at most as many tokens as that
            # window decoded; looking further back could only find a repeated phrase from older audio.
            searched = min(previous_count, len(merged))
            keep, skip = _seam(merged[len(merged) - searched :], tokens)
            kept = len(merged) - searched + keep
        merged = merged[:kept] + tokens[skip:]
        owners = owners[:kept] + [index] * (len(tokens) - skip)
        previous, previous_count = window, len(tokens)
    segments: list[tuple[int, list[int]]] = []
    for token, owner in zip(merged, owners, strict=True):
        if segments and segments[-1][0] == owner:
            segments[-1][1].append(token)
        else:
            segments.append((owner, [token]))
    return segments


def _seam(left: list[int], right: list[int]) -> tuple[int, int]:
    """Where to join: keep left[:keep] and right[skip:]. (len(left), 0) when no overlap is found."""
    best: tuple[int, int, int] = (0, 0, 0)  # (run length, agreeing tokens, -k)
    cut = (len(left), 0)
    for k in range(1, min(len(left), len(right)) + 1):
        agree = [a == b for a, b in zip(left[-k:], right[:k], strict=True)]
        run, run_end = _longest_run(agree)
        score = (run, sum(agree), -k)
        if run >= MIN_AGREEMENT and score > best:
            best = score
            middle = run_end - run // 2  # index into the k aligned positions
            cut = (len(left) - k + middle, middle)
    return cut


def _longest_run(flags: list[bool]) -> tuple[int, int]:
    """Length and end index (exclusive) of the longest run of True."""
    best, best_end, current = 0, 0, 0
    for i, flag in enumerate(flags):
        current = current + 1 if flag else 0
        if current > best:
            best, best_end = current, i + 1
    return best, best_end
