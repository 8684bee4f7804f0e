"""Turn whatever the caller has (path, file bytes, array) into what the server accepts.

Two routes: decode here to 16 kHz mono float32 (`AUDIO`), or ship the file's bytes (`AUDIO_FILE`)
and let the server decode. Everything that can be found wrong locally raises InvalidRequest
before any network call, so a typo in a path never costs a round trip or a retry.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
import soundfile as sf
import soxr

from .errors import InvalidRequest

__all__ = ["SAMPLE_RATE", "AudioInput", "PreparedAudio", "decode_audio", "prepare_audio", "to_mono_16k"]

# Whisper's feature extractor works at 16 kHz; resampling here keeps requests small and lets the
# server skip its own resampler.
SAMPLE_RATE = 16000

AudioInput: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray | tuple[np.ndarray, int]
)

# More channels than this on the first axis of a 2-D array cannot be (channels, frames) audio.
_MAX_CHANNELS = 8


@dataclass(frozen=True)
class PreparedAudio:
    """Exactly one of `samples` (float32 mono at 16 kHz) and `file_bytes` is set."""

    samples: np.ndarray | None = None
    file_bytes: bytes | None = None


def prepare_audio(
    audio: AudioInput, *, sample_rate: int | None = None, send_file_bytes: bool | None = None
) -> PreparedAudio:
    """Validate `audio` and put it in the form the request will carry.

    `sample_rate` is required for arrays and ignored for files (their header has it).
    `send_file_bytes=None` picks the natural route: bytes go to the server as they are,
    paths are decoded here. Arrays are always sent as samples.
    """
    if isinstance(audio, tuple):
        if len(audio) != 2:
            raise InvalidRequest("audio tuples must be (array, sample_rate)")
        audio, sample_rate = audio
    if isinstance(audio, np.ndarray):
        if sample_rate is None:
            raise InvalidRequest("sample_rate is required when audio is a numpy array")
        return PreparedAudio(samples=to_mono_16k(audio, sample_rate))
    if isinstance(audio, bytes | bytearray | memoryview):
        data = bytes(audio)
        if send_file_bytes is None or send_file_bytes:
            _probe(data, "audio bytes")
            return PreparedAudio(file_bytes=data)
        return PreparedAudio(samples=decode_audio(data))
    if isinstance(audio, str | os.PathLike):
        if send_file_bytes:
            data = _read_file(Path(audio))
            _probe(data, os.fspath(audio))
            return PreparedAudio(file_bytes=data)
        return PreparedAudio(samples=decode_audio(audio))
    raise InvalidRequest(
        f"unsupported audio type {type(audio).__name__}; expected a path, file bytes or a numpy array"
    )


def decode_audio(source: str | os.PathLike[str] | bytes) -> np.ndarray:
    """Decode a WAV/FLAC/OGG/MP3 file (path or bytes) to float32 mono at 16 kHz."""
    if isinstance(source, bytes):
        name = "audio bytes"
        data = source
    else:
        name = os.fspath(source)
        data = _read_file(Path(source))
    if not data:
        raise InvalidRequest(f"{name}: the file is empty")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"{name}: cannot decode audio ({_reason(exc)})") from exc
    # soundfile gives (frames, channels), which to_mono_16k expects.
    return to_mono_16k(samples, rate, name=name)


def to_mono_16k(audio: np.ndarray, sample_rate: int, *, name: str = "audio array") -> np.ndarray:
    """Downmix, rescale integer PCM to [-1, 1] and resample to 16 kHz; returns float32 1-D.

    2-D input is (frames, channels) as soundfile returns it; (channels, frames) as torchaudio
    returns it is recognised by its short first axis.
    """
    if not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise InvalidRequest(f"{name}: sample_rate must be a positive integer, got {sample_rate!r}")
    samples = _to_float32(np.asarray(audio), name)
    if samples.ndim == 2:
        if samples.shape[0] <= _MAX_CHANNELS < samples.shape[1]:
            samples = samples.T
        samples = samples.mean(axis=1, dtype=np.float32)
    elif samples.ndim != 1:
        raise InvalidRequest(f"{name}: expected 1-D or 2-D audio, got shape {samples.shape}")
    if samples.size == 0:
        raise InvalidRequest(f"{name}: the audio has no samples")
    if not np.isfinite(samples).all():
        raise InvalidRequest(f"{name}: the audio contains NaN or infinite samples")
    if sample_rate != SAMPLE_RATE:
        samples = soxr.resample(samples, int(sample_rate), SAMPLE_RATE, quality="HQ")
    # Resampling can overshoot full scale by a hair; the contract promises the server [-1, 1].
    return np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False)


def _to_float32(samples: np.ndarray, name: str) -> np.ndarray:
    kind = samples.dtype.kind
    if kind == "f":
        return samples.astype(np.float32, copy=False)
    if kind == "i":
        # Signed PCM: full scale is 2**(bits-1), e.g. 32768 for int16.
        return (samples / float(np.iinfo(samples.dtype).max + 1)).astype(np.float32)
    if samples.dtype == np.uint8:
        # 8-bit WAV is unsigned with silence at 128.
        return ((samples.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    raise InvalidRequest(f"{name}: unsupported sample dtype {samples.dtype}")


def _read_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidRequest(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise InvalidRequest(f"{path}: is a directory, not an audio file") from exc
    except OSError as exc:
        raise InvalidRequest(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not data:
        raise InvalidRequest(f"{path}: the file is empty")
    return data


def _probe(data: bytes, name: str) -> None:
    """Reject bytes that are not a readable audio file before shipping them to the server.

    Only the header is parsed, so this is cheap even for long files; a file that is truncated
    after a valid header still reaches the server, which answers INVALID_ARGUMENT.
    """
    if not data:
        raise InvalidRequest(f"{name}: the file is empty")
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"{name}: not a readable audio file ({_reason(exc)})") from exc
    if info.frames == 0:
        raise InvalidRequest(f"{name}: the audio has no samples")


def _reason(exc: Exception) -> str:
    # libsndfile's message names the BytesIO object ("Error opening <_io.BytesIO ...>"), which
    # tells the user nothing; its bare error string is the useful part.
    return str(getattr(exc, "error_string", "") or exc).strip().rstrip(".")
