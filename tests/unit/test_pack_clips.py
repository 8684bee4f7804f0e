"""`loadtest/clips.pack_clips`: consecutive clips joined into dense windows for the benchmarks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtest"))
from clips import Clip, pack_clips

RATE = 16_000


def clip(name: str, seconds: float, language: str = "en") -> Clip:
    samples = round(seconds * RATE)
    return Clip(name, language, f"text {name}", np.full(samples, len(name), dtype=np.float32))


def test_joins_in_order_with_silence_between_and_never_exceeds_the_window() -> None:
    clips = [clip("a", 10), clip("bb", 12), clip("ccc", 9), clip("dddd", 5)]
    windows = pack_clips(clips, seconds=30, gap_s=0.5)
    assert [w.id for w in windows] == ["a+bb", "ccc+dddd"]  # 10 + 0.5 + 12 + 0.5 + 9 > 30
    assert all(w.seconds <= 30 for w in windows)
    first = windows[0]
    assert first.text == "text a text bb"
    assert len(first.pcm) == round(22.5 * RATE)
    gap = first.pcm[10 * RATE : round(10.5 * RATE)]
    assert not gap.any()
    np.testing.assert_array_equal(first.pcm[: 10 * RATE], clips[0].pcm)
    np.testing.assert_array_equal(first.pcm[round(10.5 * RATE) :], clips[1].pcm)


def test_a_long_clip_stays_alone_and_languages_never_mix() -> None:
    windows = pack_clips([clip("a", 5), clip("b", 40), clip("c", 5), clip("d", 5, "de")], seconds=30)
    assert [(w.id, w.language) for w in windows] == [("a", "en"), ("b", "en"), ("c", "en"), ("d", "de")]


@pytest.mark.parametrize("seconds", [15.0, 30.0])
def test_every_sample_of_every_clip_is_kept(seconds: float) -> None:
    clips = [clip(str(i), 1 + i % 7) for i in range(12)]
    windows = pack_clips(clips, seconds=seconds, gap_s=0.25)
    assert "+".join(w.id for w in windows) == "+".join(c.id for c in clips)
    assert sum(np.count_nonzero(w.pcm) for w in windows) == sum(len(c.pcm) for c in clips)
