"""Fixtures for the client tests: a scripted fake gRPC server and a few clips from `speech_dir`
(tests/conftest.py), which live outside the repository."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_triton import FakeServer, FakeTriton


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    """A fake Triton on a free port that answers every ModelInfer with canned outputs until scripted."""
    with FakeServer(FakeTriton()) as server:
        yield server


@pytest.fixture
def free_port() -> int:
    """A port with nothing listening on it (the OS picked it, then we let it go)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def flac_16k(speech_dir: Path) -> Path:
    """A 2.8 s LibriSpeech utterance: FLAC, 16 kHz, mono, English."""
    return speech_dir / "librispeech_test_other/1688/1688-142285-0002.flac"


@pytest.fixture(scope="session")
def mp3_44k(speech_dir: Path) -> Path:
    """A 68 s LibriVox reading: MP3, 44.1 kHz, German."""
    return speech_dir / "librivox/aeneas_de.mp3"


@pytest.fixture(scope="session")
def ogg_opus(speech_dir: Path) -> Path:
    """A 12.8 s FLEURS sentence: Opus in Ogg, 16 kHz, Spanish (fr-000 is too quiet to be a fair test)."""
    return speech_dir / "fleurs/es/fleurs-es-000.ogg"
