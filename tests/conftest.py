"""Shared fixtures. The real-speech clips live outside the repo, in the shared data folder."""

from __future__ import annotations

import json
import os
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
