"""`whisper_long`: the 203 s recording in sequential windows that seek on timestamps, served by BLS
through the same encoder and decoder as the ensemble. Its tokens are the in-process engine's long-form
tokens (which tests/slow/test_exactness_long_form.py holds to transformers' long-form generate()), and
it recovers the words that the ensemble's batched windows lose."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from triton_helpers import Result, served_counts, transcribe, words

from spec_whisper.audio import SAMPLE_RATE, decode_audio
from spec_whisper.engine import SpeculativeWhisper
from spec_whisper.longform import LongTranscription
from spec_whisper.types import DecodingOptions

pytestmark = pytest.mark.integration

LONG = "whisper_long"


@pytest.fixture(scope="module")
def longform(manifest: list[dict[str, Any]]) -> dict[str, Any]:
    return next(item for item in manifest if item["path"].startswith("longform/"))


@pytest.fixture(scope="module")
def samples(speech_dir: Path, longform: dict[str, Any]) -> np.ndarray:
    return decode_audio(speech_dir / longform["path"])


@pytest.fixture(scope="module")
def sequential(triton_url: str, speech_dir: Path, longform: dict[str, Any]) -> Result:
    audio_file = (speech_dir / longform["path"]).read_bytes()
    return transcribe(triton_url, model=LONG, audio_file=audio_file, language="en")


@pytest.fixture(scope="module")
def in_process(offline_models: tuple[Path, Path], samples: np.ndarray) -> LongTranscription:
    engine = SpeculativeWhisper.load(offline_models[0])  # plain greedy: what speculation must reproduce
    return engine.transcribe_long([samples], DecodingOptions(language="en", speculative=False))[0]


def test_tokens_and_segments_are_the_engines_long_form(
    sequential: Result, in_process: LongTranscription
) -> None:
    assert sequential.tokens == in_process.tokens
    assert sequential.segment_text == [s.text for s in in_process.segments]
    expected = np.array([[s.start, s.end] for s in in_process.segments])
    np.testing.assert_allclose(sequential.segment_times, expected, atol=1e-3)
    assert sequential.text == in_process.text and sequential.language == "en"
    drafted, accepted, _ = sequential.stats
    assert 0 < accepted <= drafted, "the default request is speculative"


def test_windows_follow_each_other_without_gaps(sequential: Result, longform: dict[str, Any]) -> None:
    windows = sequential.windows
    assert len(windows) >= 7 and windows[0, 0] == 0
    assert np.all(np.diff(windows[:, 0]) > 0) and np.all(windows[1:, 0] <= windows[:-1, 1] + 1e-3)
    assert abs(windows[-1, 1] - longform["duration_s"]) < 0.02
    times = sequential.segment_times
    assert np.all(times[:, 1] >= times[:, 0]) and np.all(np.diff(times[:, 0]) >= 0)


def test_plain_request_gives_the_same_tokens(
    triton_url: str, samples: np.ndarray, sequential: Result
) -> None:
    plain = transcribe(triton_url, model=LONG, audio=samples, language="en", speculative=False)
    assert plain.tokens == sequential.tokens and plain.stats[0] == 0


def test_recovers_the_words_batched_windows_lose(
    triton_url: str, speech_dir: Path, longform: dict[str, Any], sequential: Result
) -> None:
    batched = transcribe(triton_url, audio_file=(speech_dir / longform["path"]).read_bytes(), language="en")
    reference = words(longform["text"])
    sequential_wer, batched_wer = (jiwer.wer(reference, words(r.text)) for r in (sequential, batched))
    assert sequential_wer < batched_wer - 0.02, f"sequential {sequential_wer:.3f}, batched {batched_wer:.3f}"
    assert sequential_wer < 0.14


def test_concurrent_recordings_each_get_their_own_transcript(
    triton_url: str, samples: np.ndarray, sequential: Result
) -> None:
    piece = samples[round(95.3 * SAMPLE_RATE) : round(171.1 * SAMPLE_RATE)]
    requests = [{"audio": samples, "language": "en"}, {"audio": piece}, {"audio": piece}]
    before = served_counts(triton_url)
    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(lambda kwargs: transcribe(triton_url, model=LONG, **kwargs), requests))
    windows, batches = np.subtract(served_counts(triton_url), before)
    assert results[0].tokens == sequential.tokens
    assert results[1].tokens == results[2].tokens and results[1].language == "en"
    assert 2 <= len(results[1].windows) < len(sequential.windows)
    assert windows == sum(len(r.windows) for r in results)
    assert batches < windows, "the recordings' windows never shared a decoder batch"


def test_a_short_recording_is_not_kept_waiting_behind_a_long_one(
    triton_url: str, samples: np.ndarray, sequential: Result
) -> None:
    short = samples[: 12 * SAMPLE_RATE]
    alone = transcribe(triton_url, model=LONG, audio=short, language="en")
    finished: dict[str, float] = {}

    def timed(name: str, audio: np.ndarray) -> Result:
        result = transcribe(triton_url, model=LONG, audio=audio, language="en")
        finished[name] = time.monotonic()
        return result

    with ThreadPoolExecutor(2) as pool:
        long_result = pool.submit(timed, "long", samples)
        time.sleep(1.0)  # the long recording is well into its windows (it takes several seconds)
        short_result = pool.submit(timed, "short", short)
        assert short_result.result().tokens == alone.tokens
        assert long_result.result().tokens == sequential.tokens
    assert finished["short"] < finished["long"], "the short request waited for the long one to finish"


def test_a_recording_the_client_gave_up_on_stops_being_decoded(
    triton_url: str, samples: np.ndarray, sequential: Result
) -> None:
    before = served_counts(triton_url)
    with pytest.raises(grpcclient.InferenceServerException) as error:
        transcribe(triton_url, timeout_s=1.5, model=LONG, audio=samples, language="en")
    assert error.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    time.sleep(8.0)  # longer than the rest of the recording would take to decode
    windows, _ = np.subtract(served_counts(triton_url), before)
    assert windows < len(sequential.windows), "the server went on decoding a cancelled request"
    assert transcribe(triton_url, model=LONG, audio=samples[: 20 * SAMPLE_RATE], language="en").text


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"audio_file": b"RIFF\x00\x00 not audio at all"}, "audio"),
        ({"audio": np.zeros(5 * SAMPLE_RATE, dtype=np.float32)}, "silent"),
        ({"audio": np.ones(SAMPLE_RATE, dtype=np.float32), "language": "xx"}, "language"),
    ],
    ids=["corrupt file", "silence", "unknown language"],
)
def test_bad_input_is_invalid_argument_and_the_model_stays_up(
    triton_url: str, samples: np.ndarray, kwargs: dict, named: str
) -> None:
    with pytest.raises(grpcclient.InferenceServerException) as error:
        transcribe(triton_url, model=LONG, **kwargs)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT" and named in error.value.message().lower()
    assert transcribe(triton_url, model=LONG, audio=samples[: 40 * SAMPLE_RATE], language="en").text


def test_the_command_line_writes_a_subtitle_cue_per_segment(
    triton_url: str, speech_dir: Path, longform: dict[str, Any], sequential: Result, capsys: Any
) -> None:
    from spec_whisper_client.cli import main

    path = str(speech_dir / longform["path"])
    argv = ["transcribe", "--url", triton_url, "--model", LONG, "--language", "en", "--format", "srt", path]
    code = main(argv)
    assert code == 0
    cues = [block.splitlines() for block in capsys.readouterr().out.strip().split("\n\n")]
    assert len(cues) == len([t for t in sequential.segment_text if t.strip()]) > 20
    assert cues[0][1].startswith("00:00:00,000 --> ") and cues[-1][1].startswith("00:03:")
