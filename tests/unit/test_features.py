from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from spec_whisper.audio import N_SAMPLES, decode_audio
from spec_whisper.features import N_FRAMES, LogMelSpectrogram

TOLERANCE = 1e-4
# Short and long speech, a clip over 30 s (trimmed), three codecs.
CLIPS = [
    "librispeech_test_other/1688/1688-142285-0002.flac",
    "librispeech_test_other/1688/1688-142285-0000.flac",
    "fleurs/pt/fleurs-pt-005.ogg",
    "librivox/aeneas_es.mp3",
]


@pytest.fixture(scope="module")
def clips(speech_dir: Path) -> list[np.ndarray]:
    return [decode_audio(speech_dir / path) for path in CLIPS]


def _reference(clips: list[np.ndarray], n_mels: int) -> np.ndarray:
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    return extractor(clips, sampling_rate=16000, return_tensors="np").input_features


def _numpy_reference(clip: np.ndarray, n_mels: int) -> np.ndarray:
    # transformers' own numpy STFT path: an implementation independent of torch.stft.
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    padded = np.zeros(N_SAMPLES, dtype=np.float32)
    padded[: min(len(clip), N_SAMPLES)] = clip[:N_SAMPLES]
    return extractor._np_extract_fbank_features(padded[None], "cpu")[0]


@pytest.mark.parametrize("n_mels", [80, 128])
def test_matches_whisper_feature_extractor_one_clip_at_a_time(clips: list[np.ndarray], n_mels: int) -> None:
    mel = LogMelSpectrogram(n_mels)
    for clip in clips:
        ours = mel.from_pcm([clip])
        assert ours.shape == (1, n_mels, N_FRAMES) and ours.dtype == torch.float32
        np.testing.assert_allclose(ours.numpy(), _reference([clip], n_mels), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_matches_in_a_batch_of_different_lengths(clips: list[np.ndarray], n_mels: int) -> None:
    ours = LogMelSpectrogram(n_mels).from_pcm(clips).numpy()
    assert ours.shape == (len(clips), n_mels, N_FRAMES)
    np.testing.assert_allclose(ours, _reference(clips, n_mels), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_matches_the_numpy_reference(clips: list[np.ndarray], n_mels: int) -> None:
    if not hasattr(WhisperFeatureExtractor, "_np_extract_fbank_features"):
        pytest.skip("this transformers version has no numpy feature path")
    mel = LogMelSpectrogram(n_mels)
    for clip in clips[:2]:
        reference = _numpy_reference(clip, n_mels)
        np.testing.assert_allclose(mel.from_pcm([clip])[0].numpy(), reference, rtol=0, atol=TOLERANCE)


def test_forward_pads_and_trims_tensors(clips: list[np.ndarray]) -> None:
    mel = LogMelSpectrogram(80)
    short, long = torch.from_numpy(clips[0]), torch.from_numpy(clips[3])
    assert len(long) > N_SAMPLES
    torch.testing.assert_close(mel(short), mel.from_pcm([clips[0]]), rtol=0, atol=0)
    torch.testing.assert_close(mel(long[None]), mel(long[None, :N_SAMPLES]), rtol=0, atol=0)


def test_clips_in_a_batch_are_normalised_independently(clips: list[np.ndarray]) -> None:
    mel = LogMelSpectrogram(80)
    quiet = clips[0] * 0.01
    together = mel.from_pcm([clips[1], quiet])
    torch.testing.assert_close(together[1:], mel.from_pcm([quiet]), rtol=0, atol=1e-6)


def test_rejects_unknown_mel_count() -> None:
    with pytest.raises(ValueError, match="80 or 128"):
        LogMelSpectrogram(64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("n_mels", [80, 128])
def test_matches_on_cuda(clips: list[np.ndarray], n_mels: int) -> None:
    # cuFFT and CPU FFT round differently; the tolerance still has to hold.
    ours = LogMelSpectrogram(n_mels, device="cuda").from_pcm(clips)
    assert ours.device.type == "cuda"
    np.testing.assert_allclose(ours.cpu().numpy(), _reference(clips, n_mels), rtol=0, atol=TOLERANCE)


def test_a_whole_recording_has_the_features_of_transformers_long_form_extraction(speech_dir: Path) -> None:
    # 75 s of the long-form recording: several windows' worth, normalised over all of it, not per window.
    pcm = decode_audio(speech_dir / "longform/librispeech_test_other_2609-156975_3080-5032_concat.flac")
    pcm = pcm[: 75 * 16000 + 123]  # not a whole number of frames
    expected = WhisperFeatureExtractor()(
        pcm, sampling_rate=16000, return_tensors="np", truncation=False, padding="longest"
    ).input_features[0]
    ours = LogMelSpectrogram().whole(pcm).numpy()
    assert ours.shape == expected.shape == (80, len(pcm) // 160)
    np.testing.assert_allclose(ours, expected, atol=TOLERANCE)
    per_window = LogMelSpectrogram().from_pcm([pcm[30 * 16000 :]])[0].numpy()
    assert np.abs(per_window - expected[:, 3000:6000]).max() > 10 * TOLERANCE  # the range differs


def test_a_recording_shorter_than_one_fft_window_still_has_features() -> None:
    features = LogMelSpectrogram().whole(np.full(100, 0.1, dtype=np.float32))
    assert features.shape == (80, 2) and torch.isfinite(features).all()
