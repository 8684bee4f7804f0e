"""An assistant that runs its own encoder (as whisper-tiny does for large-v2), served: whisper-base
assists itself with `assistant_encoder` set to "own", on a server of its own. The encoder step then
returns the assistant's states beside the main model's, the ensemble and `whisper_long` hand each
window's states on to the decoder, and speculative tokens equal plain ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from triton_helpers import transcribe

from spec_whisper.audio import SAMPLE_RATE, decode_audio

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def url(offline_models: tuple[Path, Path], start_triton: Callable[..., Any]) -> Iterator[str]:
    main = offline_models[0]
    server = start_triton("own_encoder", main, main, assistant_encoder="own")
    yield server.grpc_url
    server.stop()


@pytest.fixture(scope="module")
def pieces(speech_dir: Path, manifest: list[dict[str, Any]]) -> list[np.ndarray]:
    longform = next(item for item in manifest if item["path"].startswith("longform/"))
    samples = decode_audio(speech_dir / longform["path"])
    return [samples[: 65 * SAMPLE_RATE], samples[100 * SAMPLE_RATE : 150 * SAMPLE_RATE]]


def test_the_encoder_step_returns_the_assistants_own_states(url: str) -> None:
    mel = grpcclient.InferInput("MEL", [1, 2, 80, 3000], "FP32")
    mel.set_data_from_numpy(np.zeros((1, 2, 80, 3000), dtype=np.float32))
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer("whisper_encoder", [mel])
    assert result.as_numpy("ENCODER_STATES").shape == (1, 2, 1500, 512)
    assert result.as_numpy("ASSISTANT_STATES").shape[:2] == (1, 2)


@pytest.mark.parametrize("model", ["whisper", "whisper_long"])
def test_speculative_equals_plain_with_concurrent_recordings(
    url: str, pieces: list[np.ndarray], model: str
) -> None:
    plain = [transcribe(url, model=model, audio=p, language="en", speculative=False) for p in pieces]
    with ThreadPoolExecutor(len(pieces)) as pool:
        speculative = list(pool.map(lambda p: transcribe(url, model=model, audio=p, language="en"), pieces))
    for expected, got in zip(plain, speculative, strict=True):
        assert got.tokens == expected.tokens
        drafted, accepted, _ = got.stats
        assert 0 < accepted <= drafted, "the assistant never drafted"
