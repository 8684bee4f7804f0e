"""Long-form transcription equals transformers' own long-form `generate()` (sequential 30 s windows
seeking on timestamps, greedy, `condition_on_prev_tokens=False`) token for token and segment for
segment, timestamps included, on the shared 203 s recording: plain and speculative, alone and in a
batch with another recording, with the language given and detected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spec_whisper.audio import decode_audio
from spec_whisper.engine import SpeculativeWhisper
from spec_whisper.longform import LongTranscription
from spec_whisper.types import DecodingOptions

pytestmark = pytest.mark.slow

RECORDING = "longform/librispeech_test_other_2609-156975_3080-5032_concat.flac"


@pytest.fixture(scope="module")
def recordings(speech_dir: Path) -> list[np.ndarray]:
    whole = decode_audio(speech_dir / RECORDING)
    return [whole, whole[int(95.3 * 16000) : int(171.1 * 16000)]]  # the second speaker, cut mid-word


@pytest.fixture(scope="module")
def reference(
    transformers_whisper: tuple[Any, Any], recordings: list[np.ndarray]
) -> list[list[tuple[float, float, list[int]]]]:
    """(start, end, tokens) of each segment transformers finds in each recording."""
    import torch

    model, extractor = transformers_whisper
    out = []
    for pcm in recordings:
        features = extractor(
            pcm, sampling_rate=16000, return_tensors="pt", truncation=False, padding="longest",
            return_attention_mask=True,
        )  # fmt: skip
        with torch.inference_mode():
            generated: Any = model.generate(
                features.input_features, attention_mask=features.attention_mask, task="transcribe",
                return_timestamps=True, condition_on_prev_tokens=False, do_sample=False, num_beams=1,
                return_segments=True,
            )  # fmt: skip
        out.append(
            [(float(s["start"]), float(s["end"]), s["tokens"].tolist()) for s in generated["segments"][0]]
        )
    return out


@pytest.fixture(scope="module")
def engine(whisper_base_dir: Path, assistant_dir: Path) -> SpeculativeWhisper:
    return SpeculativeWhisper.load(whisper_base_dir, assistant_dir)


def _assert_same(ours: LongTranscription, theirs: list[tuple[float, float, list[int]]]) -> None:
    assert [s.tokens for s in ours.segments] == [tokens for _, _, tokens in theirs]
    assert [s.start for s in ours.segments] == pytest.approx([start for start, _, _ in theirs], abs=1e-6)
    assert [s.end for s in ours.segments] == pytest.approx([end for _, end, _ in theirs], abs=1e-6)


@pytest.mark.parametrize("speculative", [False, True], ids=["plain", "speculative"])
def test_a_long_recording_is_transformers_long_form_generate(
    engine: SpeculativeWhisper, recordings: list[np.ndarray], reference: list, speculative: bool
) -> None:
    result = engine.transcribe_long(recordings[:1], DecodingOptions(language="en", speculative=speculative))[
        0
    ]
    _assert_same(result, reference[0])
    assert result.windows >= 7 and len(result.segments) > 20  # 203 s: it did seek, window by window
    assert result.segments[-1].end > 195
    if speculative:
        assert 0 < result.stats.accepted <= result.stats.drafted  # CI distils a shorter-trained assistant


def test_recordings_decoded_together_each_equal_their_own_reference(
    engine: SpeculativeWhisper, recordings: list[np.ndarray], reference: list
) -> None:
    results = engine.transcribe_long(recordings, DecodingOptions())  # language detected, speculative
    for result, theirs in zip(results, reference, strict=True):
        assert result.language == "en"
        _assert_same(result, theirs)
    assert results[1].windows < results[0].windows
