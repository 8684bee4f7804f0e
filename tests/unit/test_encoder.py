"""Our encoder runner computes what transformers' Whisper encoder computes, on the same weights."""

from __future__ import annotations

import pytest
import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from spec_whisper.cpu_kernels import use_kernels
from spec_whisper.encoder import CPU_WINDOWS_PER_PASS, WhisperEncoderRunner


@pytest.fixture(scope="module")
def encoder() -> WhisperEncoder:
    torch.manual_seed(0)
    # Heads of 64, as in every Whisper size, so that the CPU kernel takes the attention.
    config = WhisperConfig(d_model=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=512)
    return WhisperEncoder(config).eval()


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("prepack", [None, True, False])  # measured here, oneDNN's, PyTorch's default
def test_equals_transformers_encoder(encoder: WhisperEncoder, kernel: bool, prepack: bool | None) -> None:
    mel = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = encoder(mel).last_hidden_state
        use_kernels(kernel)
        try:
            runner = WhisperEncoderRunner(encoder, prepack=prepack)
            ours = runner(mel)
        finally:
            use_kernels(True)
    if prepack is not None:
        assert all(layer.fc1.packed == prepack for layer in runner.layers)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_refuses_features_of_another_length(encoder: WhisperEncoder) -> None:
    with pytest.raises(ValueError, match="3000 feature frames, got 2999"):
        WhisperEncoderRunner(encoder)(torch.zeros(1, 80, 2999))


def test_a_cpu_batch_runs_in_small_passes_with_the_same_result(encoder: WhisperEncoder) -> None:
    mel = torch.randn(CPU_WINDOWS_PER_PASS * 2 + 1, 80, 3000, generator=torch.Generator().manual_seed(2))
    runner = WhisperEncoderRunner(encoder)
    with torch.inference_mode():
        together = runner(mel)
        alone = torch.cat([runner(window[None]) for window in mel])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
