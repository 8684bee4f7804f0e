from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from spec_whisper.audio import SAMPLE_RATE, AudioError, decode_audio, prepare_pcm

FLAC = "librispeech_test_other/1688/1688-142285-0002.flac"
OPUS = "fleurs/de/fleurs-de-006.ogg"
MP3 = "librivox/aeneas_de.mp3"


@pytest.fixture(scope="module")
def speech(speech_dir: Path) -> np.ndarray:
    """A short real utterance as 16 kHz float32, for building PCM inputs."""
    samples, rate = sf.read(speech_dir / FLAC, dtype="float32")
    assert rate == SAMPLE_RATE
    return samples


@pytest.mark.parametrize("relpath", [FLAC, OPUS, MP3])
def test_decodes_each_format_to_16k_float32_mono(
    speech_dir: Path, manifest: list[dict], relpath: str
) -> None:
    entry = next(e for e in manifest if e["path"] == relpath)
    samples = decode_audio(speech_dir / relpath)
    assert samples.dtype == np.float32 and samples.ndim == 1 and samples.flags.c_contiguous
    assert len(samples) / SAMPLE_RATE == pytest.approx(entry["duration_s"], abs=0.01)
    assert 0.01 < np.abs(samples).max() <= 1.0


def test_mp3_at_44k1_is_resampled(speech_dir: Path) -> None:
    native, rate = sf.read(speech_dir / MP3, dtype="float32")
    assert rate == 44100
    expected = soxr.resample(native, rate, SAMPLE_RATE)
    samples = decode_audio(speech_dir / MP3)
    assert len(samples) == len(expected)
    assert len(samples) / SAMPLE_RATE == pytest.approx(len(native) / rate, abs=1e-3)
    np.testing.assert_allclose(samples, expected, atol=1e-6)


@pytest.mark.parametrize("relpath", [FLAC, OPUS, MP3])
def test_bytes_and_path_give_the_same_samples(speech_dir: Path, relpath: str) -> None:
    path = speech_dir / relpath
    from_path = decode_audio(path)
    np.testing.assert_array_equal(decode_audio(path.read_bytes()), from_path)
    np.testing.assert_array_equal(decode_audio(str(path)), from_path)


def test_stereo_wav_is_downmixed_and_resampled(speech: np.ndarray) -> None:
    native = soxr.resample(speech, SAMPLE_RATE, 22050)
    stereo = np.stack([native, 0.5 * native], axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, stereo, 22050, format="WAV", subtype="FLOAT")
    samples = decode_audio(buffer.getvalue())
    np.testing.assert_allclose(samples, soxr.resample(0.75 * native, 22050, SAMPLE_RATE), atol=1e-6)


def test_prepare_pcm_passes_16k_mono_through(speech: np.ndarray) -> None:
    out = prepare_pcm(speech.astype(np.float64))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, speech)


def test_prepare_pcm_downmixes_channels_last_and_resamples(speech: np.ndarray) -> None:
    at_8k = soxr.resample(speech, SAMPLE_RATE, 8000)
    out = prepare_pcm(np.stack([at_8k, at_8k], axis=1), 8000)
    assert out.dtype == np.float32 and out.ndim == 1
    assert len(out) == pytest.approx(2 * len(at_8k), abs=1)


# --- every bad input raises AudioError naming the problem ---


def test_empty_bytes() -> None:
    with pytest.raises(AudioError, match=r"could not decode audio file.*empty"):
        decode_audio(b"")


def test_corrupt_bytes() -> None:
    with pytest.raises(AudioError, match=r"could not decode audio file.*Format not recognised"):
        decode_audio(b"this is not audio" * 100)


def test_corrupt_wav_header() -> None:
    with pytest.raises(AudioError, match=r"could not decode audio file.*data"):
        decode_audio(b"RIFF\x00\x00\x00\x00WAVEfmt ")


@pytest.mark.parametrize("relpath", [FLAC, MP3])
def test_truncated_file(speech_dir: Path, relpath: str) -> None:
    data = (speech_dir / relpath).read_bytes()
    with pytest.raises(AudioError, match=r"could not decode audio file"):
        decode_audio(data[: len(data) // 2])


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="not found"):
        decode_audio(tmp_path / "nope.wav")


def test_wrong_input_type() -> None:
    with pytest.raises(AudioError, match="bytes or a file path"):
        decode_audio(123)  # type: ignore[arg-type]


def test_decode_too_long(speech_dir: Path) -> None:
    with pytest.raises(AudioError, match=r"audio is 68\.0 s long; the limit is 30\.0 s"):
        decode_audio(speech_dir / MP3, max_seconds=30)


def test_nan(speech: np.ndarray) -> None:
    bad = speech.copy()
    bad[[10, 20, 30]] = np.nan
    with pytest.raises(AudioError, match="3 non-finite samples"):
        prepare_pcm(bad)


def test_inf(speech: np.ndarray) -> None:
    bad = speech.copy()
    bad[5] = np.inf
    bad[6] = -np.inf
    with pytest.raises(AudioError, match="2 non-finite samples"):
        prepare_pcm(bad)


def test_int16_rejected(speech: np.ndarray) -> None:
    with pytest.raises(AudioError, match="dtype int16"):
        prepare_pcm((speech * 32767).astype(np.int16))


def test_not_an_array() -> None:
    with pytest.raises(AudioError, match="numpy array, got list"):
        prepare_pcm([0.1, 0.2])  # type: ignore[arg-type]


def test_rank3_rejected() -> None:
    with pytest.raises(AudioError, match="rank 3"):
        prepare_pcm(np.ones((10, 2, 2), dtype=np.float32))


def test_channels_first_rejected(speech: np.ndarray) -> None:
    with pytest.raises(AudioError, match="channels-first"):
        prepare_pcm(np.stack([speech, speech]))


def test_empty_array() -> None:
    with pytest.raises(AudioError, match="empty"):
        prepare_pcm(np.zeros(0, dtype=np.float32))


@pytest.mark.parametrize("level", [0.0, 1e-6])
def test_silent(level: float) -> None:
    quiet = np.full(SAMPLE_RATE, level, dtype=np.float32)
    with pytest.raises(AudioError, match="audio is silent"):
        prepare_pcm(quiet)


def test_opposite_phase_stereo_is_silent(speech: np.ndarray) -> None:
    with pytest.raises(AudioError, match="audio is silent"):
        prepare_pcm(np.stack([speech, -speech], axis=1))


def test_too_long(speech: np.ndarray) -> None:
    long = np.tile(speech, 20)  # 20 x 2.835 s
    with pytest.raises(AudioError, match=r"audio is 56\.7 s long; the limit is 30\.0 s"):
        prepare_pcm(long, max_seconds=30.0)
    assert len(prepare_pcm(long, max_seconds=None)) == len(long)


@pytest.mark.parametrize("rate", [0, -16000, 100, 1_000_000])
def test_sample_rate_out_of_range(speech: np.ndarray, rate: int) -> None:
    with pytest.raises(AudioError, match=f"sample_rate must be between .* got {rate}"):
        prepare_pcm(speech, rate)


@pytest.mark.parametrize("rate", [16000.0, "16000", True, None])
def test_sample_rate_not_an_int(speech: np.ndarray, rate: object) -> None:
    with pytest.raises(AudioError, match="sample_rate must be an integer"):
        prepare_pcm(speech, rate)  # type: ignore[arg-type]


def test_audio_error_is_a_value_error() -> None:
    # Servers map ValueError to INVALID_ARG; AudioError must land there too.
    assert issubclass(AudioError, ValueError)
