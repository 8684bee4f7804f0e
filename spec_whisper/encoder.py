"""A Whisper encoder with its matrix products on the fastest path of the device.

The encoder is most of a short request's time on a CPU: whisper-base's 30 linear layers over
1,500 frames are 57 GFLOP a window. On 2 cores with AVX-512, PyTorch's default fp32 path (MKL) ran
them at about 170 GFLOP/s and oneDNN's prepacked inner product at about 400; on an AMD Zen 3 (AVX2)
MKL was the faster, so each machine times both once (`linear.many_rows_linear`). The arithmetic is
Hugging Face's `WhisperEncoder` step for step (pre-norm layers, queries scaled before attention,
GELU), on the same weights; only the products' summation order differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .core_turns import CoreTurns
from .cpu_attention import encoder_attention
from .linear import FastLinear, fuse_linears, many_rows_linear

__all__ = ["CPU_WINDOWS_PER_PASS", "WhisperEncoderRunner"]

# A window's activations stay in a CPU's caches (its MLP's are 1500 x 2048 floats, 12 MB), eight
# windows' do not: measured here, 0.33 s a window in passes of one or two, 0.43 s in a pass of 8.
CPU_WINDOWS_PER_PASS = 2


@dataclass
class _Layer:
    attn_norm: nn.LayerNorm
    qkv: FastLinear
    attn_out: FastLinear
    mlp_norm: nn.LayerNorm
    fc1: FastLinear
    fc2: FastLinear


class WhisperEncoderRunner:
    """Runs the weights of a Hugging Face `WhisperEncoder`: log-mel `[B, n_mels, 3000]` to states
    `[B, 1500, d_model]`. Each convolution and each layer is a turn of its own on shared cores."""

    def __init__(
        self, hf_encoder: nn.Module, turns: CoreTurns | None = None, prepack: bool | None = None
    ) -> None:
        """`prepack`: oneDNN's prepacked products (True) or PyTorch's default (False) instead of the
        one measured faster here (None; benchmarks compare both)."""
        config = hf_encoder.config
        linear = many_rows_linear if prepack is None else partial(FastLinear, prepack=prepack)
        self.turns = turns or CoreTurns()
        self.conv1, self.conv2 = hf_encoder.conv1, hf_encoder.conv2
        self.frames = config.max_source_positions
        self.positions = hf_encoder.embed_positions.weight.detach()[: self.frames]
        self.heads = config.encoder_attention_heads
        self.final_norm = hf_encoder.layer_norm
        self.layers = [
            _Layer(
                layer.self_attn_layer_norm,
                fuse_linears(
                    layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, kind=linear
                ),
                linear(layer.self_attn.out_proj.weight, layer.self_attn.out_proj.bias),
                layer.final_layer_norm,
                linear(layer.fc1.weight, layer.fc1.bias),
                linear(layer.fc2.weight, layer.fc2.bias),
            )
            for layer in hf_encoder.layers
        ]

    def __call__(self, mel: Tensor) -> Tensor:
        expected = self.frames * self.conv1.stride[0] * self.conv2.stride[0]
        if mel.shape[-1] != expected:
            raise ValueError(f"the encoder takes {expected} feature frames, got {mel.shape[-1]}")
        if mel.device.type == "cpu" and len(mel) > CPU_WINDOWS_PER_PASS:
            return torch.cat([self._encode(part) for part in mel.split(CPU_WINDOWS_PER_PASS)])
        return self._encode(mel)

    def _encode(self, mel: Tensor) -> Tensor:
        with self.turns():
            x = F.gelu(self.conv1(mel))
        with self.turns():
            x = F.gelu(self.conv2(x)).permute(0, 2, 1) + self.positions
        for i, layer in enumerate(self.layers):
            with self.turns():
                x = self._layer(layer, x)
                if i == len(self.layers) - 1:
                    x = self.final_norm(x)
        return x

    def _layer(self, layer: _Layer, x: Tensor) -> Tensor:
        x = x + layer.attn_out(encoder_attention(layer.qkv(layer.attn_norm(x)), self.heads))
        x = x + layer.fc2(F.gelu(layer.fc1(layer.mlp_norm(x))))
        if x.dtype == torch.float16:  # as transformers does, against overflow in long fp16 stacks
            bound = torch.finfo(x.dtype).max - 1000
            x = x.clamp(-bound, bound)
        return x
