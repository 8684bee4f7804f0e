"""An assistant that runs its own encoder (as whisper-tiny does for large-v2), served: whisper-base
assists itself with `assistant_encoder` set to "own", on a server of its own. The encoder step then
returns the assistant's states beside the main model's, the ensemble and `whisper_long` hand each
window's states on to the decoder, and speculative tokens equal plain ones."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from triton_helpers import transcribe

from spec_whisper.audio import SAMPLE_RATE, decode_audio

pytestmark = pytest.mark.integration

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_own_encoder_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def url(offline_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    serve, prepare = _script("serve"), _script("prepare_models")
    root = tmp_path_factory.mktemp("own_encoder")
    repository = root / "model_repository"
    shutil.copytree(
        SCRIPTS.parent / "model_repository", repository, ignore=shutil.ignore_patterns("__pycache__")
    )
    main = offline_models[0]
    prepare.write_repository(repository, main, main, "fp32", max_audio_seconds=600, assistant_encoder="own")
    server = serve.TritonServer(repository, http_port=0, grpc_port=0, metrics_port=0, log_file=root / "log")
    server.start(timeout_s=600)
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
