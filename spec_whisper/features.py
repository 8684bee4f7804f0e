"""Whisper's log-mel front end in torch, so it runs batched on the model's device."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers.audio_utils import mel_filter_bank

from spec_whisper.audio import N_SAMPLES, SAMPLE_RATE

__all__ = ["HOP_LENGTH", "N_FFT", "N_FRAMES", "LogMelSpectrogram"]

N_FFT = 400
HOP_LENGTH = 160
# Frames per 30 s window: the centred STFT gives N_SAMPLES // HOP_LENGTH + 1 and Whisper drops the last one.
N_FRAMES = N_SAMPLES // HOP_LENGTH


class LogMelSpectrogram(torch.nn.Module):
    """Log-mel features of 16 kHz clips, each padded or trimmed to 30 s: [B, samples] -> [B, n_mels, 3000].

    Matches `transformers.WhisperFeatureExtractor(feature_size=n_mels)`: centred, reflect-padded STFT with a
    periodic Hann window, power spectrum, Slaney mel filters up to 8 kHz, log10 clamped at 1e-10, each clip's
    range limited to 8 below its own maximum, then scaled by (x + 4) / 4.
    """

    def __init__(self, n_mels: int = 80, device: torch.device | str | None = None) -> None:
        super().__init__()
        if n_mels not in (80, 128):
            raise ValueError(f"Whisper models use 80 or 128 mel bins, got {n_mels}")
        self.n_mels = n_mels
        filters = mel_filter_bank(
            num_frequency_bins=1 + N_FFT // 2,
            num_mel_filters=n_mels,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        )
        # Not persistent: both are derived from n_mels, so they never belong in a checkpoint.
        self.register_buffer("filters", torch.from_numpy(filters.T).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        if device is not None:
            self.to(device)

    @property
    def device(self) -> torch.device:
        return self.filters.device

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio: [B, samples] or [samples] at 16 kHz -> float32 [B, n_mels, N_FRAMES]."""
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        audio = audio.to(self.device, torch.float32)
        # Zero padding is silence, the same as the reference extractor pads with.
        length = audio.shape[-1]
        audio = F.pad(audio, (0, N_SAMPLES - length)) if length < N_SAMPLES else audio[:, :N_SAMPLES]
        return self._log_mel(audio)

    def _log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, samples] -> [B, n_mels, samples // HOP_LENGTH]."""
        stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=self.window, return_complex=True)
        power = stft[..., :-1].abs() ** 2  # [B, 201, frames]
        log_mel = (self.filters @ power).clamp(min=1e-10).log10()
        # Per clip, so a loud clip does not raise the floor of a quiet one in the same batch.
        floor = log_mel.amax(dim=(1, 2), keepdim=True) - 8.0
        return (torch.maximum(log_mel, floor) + 4.0) / 4.0

    @torch.inference_mode()
    def whole(self, clip: np.ndarray) -> torch.Tensor:
        """[n_mels, len(clip) // HOP_LENGTH] features of a whole recording, its range limited below
        its own loudest frame (as `WhisperFeatureExtractor(truncation=False)` computes them for
        transformers' long-form decoding), for windows to be cut from."""
        audio = torch.from_numpy(np.asarray(clip, dtype=np.float32)).to(self.device)
        # The centred STFT reflects N_FFT // 2 samples at each end: a shorter clip is padded with silence.
        audio = F.pad(audio, (0, max(0, N_FFT - len(audio))))
        return self._log_mel(audio[None])[0]

    @torch.inference_mode()
    def from_pcm(self, clips: Sequence[np.ndarray]) -> torch.Tensor:
        """Variable-length 16 kHz mono float clips (e.g. from `prepare_pcm`) -> [len(clips), n_mels, 3000]."""
        batch = torch.zeros(len(clips), N_SAMPLES, dtype=torch.float32)
        for row, clip in zip(batch, clips, strict=True):
            clip = clip[:N_SAMPLES]
            row[: len(clip)] = torch.from_numpy(np.asarray(clip, dtype=np.float32))
        return self(batch)
