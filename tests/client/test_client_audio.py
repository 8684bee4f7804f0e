"""Audio inputs: paths, file bytes and arrays, and the bad ones that must fail before any network call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from spec_whisper_client import InvalidRequest, WhisperClient
from spec_whisper_client.audio import SAMPLE_RATE, decode_audio, prepare_audio, to_mono_16k


def test_path_is_decoded_here_to_16k_mono(flac_16k: Path) -> None:
    prepared = prepare_audio(flac_16k)
    reference, rate = sf.read(flac_16k, dtype="float32")
    assert rate == SAMPLE_RATE and prepared.file_bytes is None
    assert prepared.samples.dtype == np.float32 and prepared.samples.ndim == 1
    # Already 16 kHz mono: the samples go out untouched.
    np.testing.assert_array_equal(prepared.samples, reference)


def test_path_can_be_sent_as_file_bytes(flac_16k: Path) -> None:
    prepared = prepare_audio(str(flac_16k), send_file_bytes=True)
    assert prepared.samples is None
    assert prepared.file_bytes == flac_16k.read_bytes()


def test_bytes_are_sent_as_they_are_unless_asked_to_decode(flac_16k: Path) -> None:
    data = flac_16k.read_bytes()
    assert prepare_audio(data).file_bytes == data
    assert prepare_audio(bytearray(data)).file_bytes == data
    decoded = prepare_audio(data, send_file_bytes=False)
    np.testing.assert_array_equal(decoded.samples, prepare_audio(flac_16k).samples)


@pytest.mark.parametrize("name", ["mp3_44k", "ogg_opus"])
def test_compressed_files_decode_to_their_duration_at_16k(name: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(name)
    samples = decode_audio(path)
    expected = sf.info(path).duration * SAMPLE_RATE
    # MP3 decoders differ by a frame or so of padding; 1 % is far below a wrong sample rate.
    assert abs(len(samples) - expected) < 0.01 * expected
    assert np.abs(samples).max() <= 1.0 and np.abs(samples).max() > 0.01


def stereo_44k(flac_16k: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 16 kHz clip upsampled to 44.1 kHz with the right channel at half level."""
    mono, _ = sf.read(flac_16k, dtype="float32")
    up = soxr.resample(mono, SAMPLE_RATE, 44100)
    return mono, np.stack([up, 0.5 * up], axis=1)


@pytest.mark.parametrize("channels_first", [False, True])
def test_stereo_44k_array_is_downmixed_and_resampled(flac_16k: Path, channels_first: bool) -> None:
    mono, stereo = stereo_44k(flac_16k)
    audio = stereo.T if channels_first else stereo
    samples = prepare_audio(audio, sample_rate=44100).samples
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - len(mono)) <= 2
    n = min(len(samples), len(mono))
    # Downmix of (x, x/2) is 0.75 x; the round trip through 44.1 kHz keeps the waveform.
    assert np.corrcoef(samples[:n], mono[:n])[0, 1] > 0.99
    assert np.abs(samples).max() == pytest.approx(0.75 * np.abs(mono).max(), rel=0.05)


def test_array_with_its_rate_as_a_tuple(flac_16k: Path) -> None:
    _, stereo = stereo_44k(flac_16k)
    np.testing.assert_array_equal(
        prepare_audio((stereo, 44100)).samples, prepare_audio(stereo, sample_rate=44100).samples
    )


def test_integer_pcm_is_scaled_to_unit_range() -> None:
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    np.testing.assert_allclose(to_mono_16k(pcm, 16000), [0.0, 0.5, -1.0, 32767 / 32768])
    unsigned = np.array([128, 255, 0], dtype=np.uint8)
    np.testing.assert_allclose(to_mono_16k(unsigned, 16000), [0.0, 127 / 128, -1.0])


@pytest.mark.parametrize(
    ("audio", "sample_rate", "match"),
    [
        (np.zeros(100, dtype=np.float32), None, "sample_rate is required"),
        (np.zeros(0, dtype=np.float32), 16000, "no samples"),
        (np.array([0.0, np.nan], dtype=np.float32), 16000, "NaN"),
        (np.zeros((2, 3, 4), dtype=np.float32), 16000, "1-D or 2-D"),
        (np.zeros(100, dtype=np.complex64), 16000, "dtype"),
        (np.zeros(100, dtype=np.float32), 0, "positive integer"),
        (np.zeros(100, dtype=np.float32), 16000.5, "positive integer"),
        (12345, None, "unsupported audio type"),
    ],
)
def test_bad_arrays_and_types(audio: object, sample_rate: int | None, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        prepare_audio(audio, sample_rate=sample_rate)  # type: ignore[arg-type]


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.flac").write_bytes(b"fLaC but not really" + bytes(range(256)) * 8)
    (tmp_path / "folder.wav").mkdir()
    # A valid WAV header with no frames decodes to nothing.
    sf.write(tmp_path / "silent.wav", np.zeros(0, dtype=np.float32), 16000)
    return {
        "missing": (tmp_path / "missing.wav", "no such file"),
        "empty": (tmp_path / "empty.wav", "empty"),
        "corrupt": (tmp_path / "corrupt.flac", "Format not recognised|cannot decode|not a readable"),
        "directory": (tmp_path / "folder.wav", "directory"),
        "no frames": (tmp_path / "silent.wav", "no samples"),
    }


@pytest.mark.parametrize("send_file_bytes", [False, True])
def test_bad_files_fail_before_the_network(tmp_path: Path, free_port: int, send_file_bytes: bool) -> None:
    # Nothing listens on free_port: reaching the network would raise ServerUnavailable instead.
    with WhisperClient(f"127.0.0.1:{free_port}", retries=0) as client:
        for label, (path, match) in bad_files(tmp_path).items():
            with pytest.raises(InvalidRequest, match=match) as caught:
                client.transcribe(path, send_file_bytes=send_file_bytes)
            assert caught.value.status is None, label
            assert str(path) in caught.value.message, label


@pytest.mark.parametrize("send_file_bytes", [None, False])
def test_bad_bytes_fail_before_the_network(free_port: int, send_file_bytes: bool | None) -> None:
    with WhisperClient(f"127.0.0.1:{free_port}", retries=0) as client:
        with pytest.raises(InvalidRequest, match="empty"):
            client.transcribe(b"", send_file_bytes=send_file_bytes)
        with pytest.raises(InvalidRequest, match="Format not recognised"):
            client.transcribe(b"\x00garbage" * 100, send_file_bytes=send_file_bytes)
