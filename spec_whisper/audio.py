"""Audio input: decode files and validate raw PCM into 16 kHz float32 mono for Whisper."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

__all__ = ["MAX_SECONDS", "N_SAMPLES", "SAMPLE_RATE", "AudioError", "decode_audio", "prepare_pcm"]

SAMPLE_RATE = 16000
# One Whisper window: 30 s at 16 kHz.
N_SAMPLES = 30 * SAMPLE_RATE
# Default length cap. Long-form audio is windowed (see chunking.py), so this only bounds memory and
# latency: an hour is 230 MB of float32 at 16 kHz.
MAX_SECONDS = 3600.0
# Rates outside this range are almost certainly a caller bug (e.g. passing 16 for 16 kHz).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4000, 192000
# Below about 3 LSB of 16-bit audio there is nothing to transcribe, and Whisper hallucinates on silence.
SILENCE_PEAK = 1e-4
# A rank-2 array with more "channels" than this was almost surely passed channels-first.
_MAX_CHANNELS = 64


class AudioError(ValueError):
    """The audio cannot be used: undecodable, malformed, silent or too long. Safe to show to the caller."""


def decode_audio(data: bytes | str | os.PathLike, *, max_seconds: float | None = MAX_SECONDS) -> np.ndarray:
    """Decode a WAV, FLAC, Ogg (Vorbis/Opus) or MP3 file into 16 kHz float32 mono.

    `data` is the file's bytes or its path. The decoded samples go through `prepare_pcm`, so silent,
    non-finite or over-long audio raises `AudioError` just as raw PCM would.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) == 0:
            raise AudioError("could not decode audio file: the data is empty (0 bytes)")
        source, name = io.BytesIO(data), f"{len(data)} bytes"
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise AudioError(f"audio file not found: {path}")
        source, name = str(path), str(path)
    else:
        raise AudioError(f"expected audio bytes or a file path, got {type(data).__name__}")

    try:
        with sf.SoundFile(source) as f:
            declared, sample_rate = f.frames, f.samplerate
            # Refuse before decoding so an oversized upload never gets expanded into memory.
            if max_seconds is not None and sample_rate > 0 and declared / sample_rate > max_seconds:
                raise AudioError(
                    f"audio is {declared / sample_rate:.1f} s long; the limit is {max_seconds:.1f} s"
                )
            samples = f.read(dtype="float32", always_2d=True)
    except sf.SoundFileError as e:
        # libsndfile's message says what went wrong ("Format not recognised", "flac decoder lost sync").
        raise AudioError(f"could not decode audio file ({name}): {_libsndfile_reason(e)}") from e

    # A cut-off MP3 still opens and decodes up to the cut; only the declared length gives it away.
    # (FLAC fails above; a cut Ogg or WAV declares the shorter length and cannot be told from a short file.)
    # The 1% slack absorbs MP3 length estimates, which are approximate without a Xing/LAME header.
    if declared > 0 and len(samples) < 0.99 * declared:
        raise AudioError(
            f"could not decode audio file ({name}): it is truncated, the header declares "
            f"{declared / sample_rate:.2f} s but only {len(samples) / sample_rate:.2f} s could be decoded"
        )
    # Downmix here: a file's array is channels-last by construction, so prepare_pcm's channels-first guard
    # must not see it.
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    return prepare_pcm(mono, sample_rate, max_seconds=max_seconds)


def prepare_pcm(
    samples: np.ndarray, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = MAX_SECONDS
) -> np.ndarray:
    """Validate raw PCM and return it as contiguous 16 kHz float32 mono.

    `samples` is a floating array in [-1, 1]: rank 1 (mono) or rank 2 as (frames, channels), which is averaged
    to mono. Every problem raises `AudioError` naming it.
    """
    if not isinstance(samples, np.ndarray):
        raise AudioError(f"PCM samples must be a numpy array, got {type(samples).__name__}")
    if samples.dtype.kind != "f":
        # Integer PCM is rejected rather than scaled: its full-scale value (int16? int32? 24-bit in int32?)
        # is a guess, and a wrong guess silently wrecks the transcript.
        raise AudioError(
            f"PCM samples must be floating point (float32 or float64, in [-1, 1]), got dtype {samples.dtype}"
        )
    if samples.ndim not in (1, 2):
        raise AudioError(
            f"PCM samples must be rank 1 (mono) or rank 2 (frames, channels), got rank {samples.ndim} "
            f"with shape {samples.shape}"
        )
    if samples.ndim == 2 and samples.shape[1] > _MAX_CHANNELS:
        raise AudioError(
            f"rank-2 PCM must be channels last (frames, channels); shape {samples.shape} would mean "
            f"{samples.shape[1]} channels, so it looks channels-first: transpose it"
        )
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise AudioError(f"sample_rate must be an integer number of Hz, got {sample_rate!r}")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"sample_rate must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz, got {sample_rate}"
        )
    if samples.size == 0:
        raise AudioError(f"audio is empty (shape {samples.shape})")
    seconds = samples.shape[0] / sample_rate
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(f"audio is {seconds:.1f} s long; the limit is {max_seconds:.1f} s")
    bad = samples.size - int(np.count_nonzero(np.isfinite(samples)))
    if bad:
        raise AudioError(f"audio has {bad} non-finite samples (NaN or Inf) out of {samples.size}")

    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    # Checked after the downmix: opposite-phase channels cancel to silence.
    peak = float(np.abs(mono).max())
    if peak < SILENCE_PEAK:
        raise AudioError(f"audio is silent (peak amplitude {peak:.2g} is below {SILENCE_PEAK:g})")
    if sample_rate != SAMPLE_RATE:
        mono = soxr.resample(mono, int(sample_rate), SAMPLE_RATE)
    return mono


def _libsndfile_reason(error: sf.SoundFileError) -> str:
    # LibsndfileError.error_string is the bare reason; its str() also repeats the BytesIO repr.
    return getattr(error, "error_string", None) or str(error)
