"""Bad input fails its own request with INVALID_ARGUMENT and a clear message; the rest of the batch is
served and the server stays ready."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from triton_helpers import grpcclient, inputs, parse, words

pytestmark = pytest.mark.integration

CLIP = "librispeech_test_other/1688/1688-142285-0002.flac"
EXPECTED = "you don't mean that you thought me so silly"


def _tone(seconds: float, rate: int = 16000) -> np.ndarray:
    return (0.1 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def _bad_requests(good_file: bytes) -> dict[str, tuple[list[Any], str]]:
    """name -> (inputs, a fragment the error message must contain)."""
    nan = _tone(1.0)
    nan[100] = np.nan
    two_channels = grpcclient.InferInput("AUDIO", [1, 16000, 2], "FP32")
    two_channels.set_data_from_numpy(np.zeros((1, 16000, 2), np.float32))
    two_clips = grpcclient.InferInput("AUDIO", [2, 16000], "FP32")
    two_clips.set_data_from_numpy(np.stack([_tone(1.0), _tone(1.0)]))
    return {
        "empty audio": (inputs(audio=np.zeros(0, np.float32)), "empty"),
        "NaN": (inputs(audio=nan), "non-finite"),
        "int16 PCM": (inputs(audio=(_tone(1.0) * 32767).astype(np.int16)), "INT16"),
        "rank-2 PCM": ([two_channels], "shape"),
        "two clips in one request": ([two_clips], "one clip per request"),
        "corrupt file": (inputs(audio_file=b"RIFF\x00\x00junk" + bytes(1000)), "could not decode"),
        "truncated file": (inputs(audio_file=good_file[: len(good_file) // 2]), "decode"),
        "unsupported sample rate": (inputs(audio=_tone(1.0, 1000), sample_rate=1000), "sample_rate"),
        "over the length cap": (inputs(audio=_tone(601, 4000), sample_rate=4000), "limit is 600"),
        "unknown language": (inputs(audio_file=good_file, language="xx"), "unknown language"),
        "unknown task": (inputs(audio_file=good_file, task="summarize"), "unknown task"),
        "no audio": (inputs(language="en"), "exactly one"),
        "both audio inputs": (inputs(audio=_tone(1.0), audio_file=good_file), "exactly one"),
        "max_new_tokens 0": (inputs(audio_file=good_file, max_new_tokens=0), "max_new_tokens"),
        "draft_length 99": (inputs(audio_file=good_file, draft_length=99), "draft_length"),
    }


def _call(url: str, request: list[Any]) -> Any:
    with grpcclient.InferenceServerClient(url) as client:
        try:
            return parse(client.infer("whisper", request, client_timeout=600))
        except grpcclient.InferenceServerException as e:
            return e


def test_each_bad_request_fails_alone(triton_url: str, speech_dir: Path) -> None:
    good_file = (speech_dir / CLIP).read_bytes()
    bad = _bad_requests(good_file)
    good = [inputs(audio_file=good_file), inputs(audio_file=good_file, speculative=False)]
    requests = [*good, *(request for request, _ in bad.values())]
    # All in flight together, so bad and good requests share the features step's batches.
    with ThreadPoolExecutor(len(requests)) as pool:
        outcomes = list(pool.map(lambda request: _call(triton_url, request), requests))

    for outcome in outcomes[: len(good)]:
        assert not isinstance(outcome, Exception), outcome
        assert words(outcome.text) == EXPECTED
    for (name, (_, fragment)), outcome in zip(bad.items(), outcomes[len(good) :], strict=True):
        assert isinstance(outcome, grpcclient.InferenceServerException), f"{name}: no error"
        assert outcome.status() == "StatusCode.INVALID_ARGUMENT", (
            f"{name}: {outcome.status()} {outcome.message()}"
        )
        assert fragment.lower() in outcome.message().lower(), f"{name}: {outcome.message()}"

    with grpcclient.InferenceServerClient(triton_url) as client:
        assert client.is_server_ready()
        assert all(
            client.is_model_ready(m) for m in ("whisper_features", "whisper_encoder", "whisper_decoder")
        )
