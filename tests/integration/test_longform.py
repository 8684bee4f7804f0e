"""The 203 s long-form file comes back whole: windowed, merged, and as accurate as its parts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest
from triton_helpers import Result, transcribe, words

from spec_whisper.audio import SAMPLE_RATE, decode_audio

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def longform(manifest: list[dict[str, Any]]) -> dict[str, Any]:
    return next(item for item in manifest if item["path"].startswith("longform/"))


@pytest.fixture(scope="module")
def whole(triton_url: str, speech_dir: Path, longform: dict[str, Any]) -> Result:
    """The file as one request (file bytes; the server decodes and windows it)."""
    return transcribe(triton_url, audio_file=(speech_dir / longform["path"]).read_bytes(), language="en")


@pytest.fixture(scope="module")
def parts(triton_url: str, speech_dir: Path, longform: dict[str, Any]) -> list[Result]:
    """The same audio cut at its utterance boundaries, one request per utterance."""
    samples = decode_audio(speech_dir / longform["path"])
    pieces = [
        samples[round(s["start_s"] * SAMPLE_RATE) : round(s["end_s"] * SAMPLE_RATE)]
        for s in longform["segments"]
    ]
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda piece: transcribe(triton_url, audio=piece, language="en"), pieces))


def test_windows_tile_the_file(whole: Result, longform: dict[str, Any]) -> None:
    # 30 s windows starting every 20 s (5 s strides each side), the last one ending at the end of the file.
    duration = longform["duration_s"]
    assert len(whole.windows) == int(np.ceil((duration - 30) / 20)) + 1
    assert whole.windows[0, 0] == 0 and abs(whole.windows[-1, 1] - duration) < 0.01
    assert np.all(whole.windows[1:, 0] < whole.windows[:-1, 1]), "neighbouring windows overlap"
    assert np.all(np.diff(whole.windows[:, 0]) > 0)
    assert whole.language == "en" and whole.text


def test_segments_are_the_text_cut_at_window_seams(whole: Result, longform: dict[str, Any]) -> None:
    # One segment per window here (every window decoded speech), timed by the audio it alone covers:
    # the 30 s windows' middles, which tile the file.
    assert len(whole.segment_text) == len(whole.windows) == len(whole.segment_times)
    times = whole.segment_times
    assert times[0, 0] == 0 and abs(times[-1, 1] - whole.windows[-1, 1]) < 0.01
    assert np.allclose(times[1:, 0], times[:-1, 1]), "segments tile the file"
    assert np.all(times[:, 1] - times[:, 0] <= 25.01)
    # Decoding the pieces separately gives the same characters as decoding the whole.
    assert "".join(whole.segment_text).replace(" ", "") == whole.text.replace(" ", "")


def test_wer_close_to_the_utterances_one_by_one(
    whole: Result, parts: list[Result], longform: dict[str, Any]
) -> None:
    reference = words(longform["text"])
    whole_wer = jiwer.wer(reference, words(whole.text))
    parts_wer = jiwer.wer(reference, words(" ".join(p.text for p in parts)))
    assert whole_wer <= parts_wer + 0.05, f"long-form WER {whole_wer:.3f} vs one-by-one {parts_wer:.3f}"
    # Nothing dropped or repeated at the seams: about as many words as the reference.
    assert 0.9 < len(words(whole.text).split()) / len(reference.split()) < 1.1
