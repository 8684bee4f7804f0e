"""Speculative output equals transformers' greedy `generate()` on windows full of speech: the held-out
English clips joined into windows of up to 30 s (`loadtest/clips.pack_clips`). Their transcripts are
three times a short clip's, so each row runs through many more verify passes, accepts drafts deep into
its cache and, at batch 7, finishes far apart from the others."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from spec_whisper.engine import SpeculativeWhisper
from spec_whisper.types import DecodingOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtest"))
from clips import Clip, load_clips

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def windows(speech_dir: Path) -> list[Clip]:
    return load_clips(speech_dir, "librispeech-heldout", pack=30)


@pytest.fixture(scope="module")
def reference(transformers_greedy, windows: list[Clip]) -> list[list[int]]:
    return [transformers_greedy(window.pcm, "en") for window in windows]


@pytest.fixture(scope="module")
def engine(whisper_base_dir: Path, assistant_dir: Path) -> SpeculativeWhisper:
    return SpeculativeWhisper.load(whisper_base_dir, assistant_dir)


def test_the_windows_are_dense(windows: list[Clip], reference: list[list[int]]) -> None:
    assert len(windows) >= 5 and all(w.seconds <= 30 for w in windows)
    assert np.mean([len(t) for t in reference]) > 50  # a held-out clip alone averages about 23


@pytest.mark.parametrize(
    ("options", "batch"),
    [(DecodingOptions(language="en"), 1), (DecodingOptions(language="en", draft_length=5), 7)],
    ids=["cost model, batch 1", "5 drafts, batch 7"],
)
def test_speculative_equals_transformers_greedy_on_dense_windows(
    engine: SpeculativeWhisper,
    windows: list[Clip],
    reference: list[list[int]],
    options: DecodingOptions,
    batch: int,
) -> None:
    ours, drafted = [], 0
    for first in range(0, len(windows), batch):
        group = [w.pcm for w in windows[first : first + batch]]
        for result in engine.decode(engine.encode_pcm(group), [options] * len(group)):
            ours.append(result.tokens)
            drafted += result.stats.drafted
    differing = [w.id for w, a, b in zip(windows, ours, reference, strict=True) if a != b]
    assert not differing, f"{len(differing)} windows differ from transformers: {differing}"
    assert drafted > 0
