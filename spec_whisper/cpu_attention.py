"""Attention for Whisper's encoder and decoder: small C++ kernels on CPU, PyTorch's elsewhere.

The decoder's kernel (`csrc/decoder_attention.cpp`) reads each key and value once for all the
queries of a pass, where PyTorch's CPU attention packs blocks of keys once a pass brings several
(cross-attention measured here at batch 8, six layers: 1 query 7.1 ms against PyTorch's 15.8 ms,
3 queries 11.1 ms against 23.8 ms; docs/benchmarks.md). For self-attention each query stops at its
own position, where PyTorch's needs a mask built for the pass, and the kernel writes the pass's keys
and values into the cache itself. Both take and give the heads merged, as the projections around
them do: one call per attention where PyTorch took about ten operators, each costing 5-40 us in
place, where a main pass has left them cold.

The encoder's self-attention kernel (`csrc/encoder_attention.cpp`) keeps blocks of queries in
registers against keys held in cache, from the fused projection's output to the output projection's
input (a whisper-base layer: 18 ms against PyTorch's 29 ms with AVX-512; on an AMD Zen 3 with AVX2 a
whole window took 0.563 s against 0.577 s, `scripts/bench_encoder.py`). Its tiles need AVX-512 or
AVX2 with FMA; elsewhere the encoder takes PyTorch's attention.

Both are built by `cpu_kernels` and cover fp32 CPU tensors with heads of 64, every Whisper size; the
decoder's cross-attention also takes bf16 keys and values (an assistant's copy, for drafts).
Anything else, a machine without a C++ compiler, or SPEC_WHISPER_CPU_KERNEL=0 uses
`scaled_dot_product_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .cpu_kernels import kernels

__all__ = ["cross_attention", "encoder_attention", "self_attention"]

_HEAD_DIM = 64


def self_attention(qkv: Tensor, cache_k: Tensor, cache_v: Tensor, start: Tensor, length: int) -> Tensor:
    """A decoder layer's self-attention from its fused projection `qkv [B, T, 3 * width]` (queries not
    yet scaled): writes token t's key and value into the layer's cache `[B, H, S, D]` at position
    `start[b] + t`, then lets each query see its own position and those before it -> `[B, T, width]`.
    `length`: the cache slots PyTorch's attention reads (at least up to the last position written;
    all of them for a CUDA graph), masked past each query."""
    if _fits_self_kernel(qkv, cache_k, cache_v, start) and (kernel := kernels()) is not None:
        return kernel.decoder_self_attention(qkv, cache_k, cache_v, start, _HEAD_DIM**-0.5)
    batch, steps, width = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
    heads, head_dim = cache_k.shape[1], cache_k.shape[3]
    q, k, v = qkv.split(width, dim=-1)
    positions = start[:, None] + torch.arange(steps, device=qkv.device)
    rows = torch.arange(batch, device=qkv.device)[:, None]
    cache_k[rows, :, positions] = k.view(batch, steps, heads, head_dim)
    cache_v[rows, :, positions] = v.view(batch, steps, heads, head_dim)
    # Query t of row b may see every key at or before its own position, nothing after.
    visible = torch.arange(length, device=qkv.device) <= positions[..., None]
    attended = F.scaled_dot_product_attention(
        _split_heads(q, heads) * head_dim**-0.5,
        cache_k[:, :, :length],
        cache_v[:, :, :length],
        attn_mask=visible[:, None],
        scale=1.0,
    )
    return _merge_heads(attended)


def cross_attention(q: Tensor, k: Tensor, v: Tensor, frames: Tensor | None = None) -> Tensor:
    """`softmax(q k^T / sqrt(D)) v` per row and head from and to merged heads: `q [B, T, H * D]`
    (not yet scaled), `k, v [B, H, L, D]` in `q`'s dtype or, on CPU, bf16 -> `[B, T, H * D]`.
    `frames [B]` (int64, on the host): row b attends to its first `frames[b]` keys only."""
    if _fits_cross_kernel(q, k, v, frames) and (kernel := kernels()) is not None:
        return kernel.decoder_cross_attention(q.contiguous(), k, v, _HEAD_DIM**-0.5, frames)
    heads, head_dim = k.shape[1], k.shape[3]
    mask = None
    if frames is not None:
        mask = (torch.arange(k.shape[2]) < frames[:, None])[:, None, None].to(q.device)
    attended = F.scaled_dot_product_attention(
        _split_heads(q, heads) * head_dim**-0.5, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=1.0
    )
    return _merge_heads(attended)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """`[B, T, H * D]` -> `[B, H, T, D]`, a view."""
    return x.view(x.shape[0], x.shape[1], heads, x.shape[2] // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """`[B, H, T, D]` -> `[B, T, H * D]`, the output projection's input."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], x.shape[1] * x.shape[3])


def encoder_attention(qkv: Tensor, heads: int) -> Tensor:
    """Self-attention over all frames, from the fused projection's `qkv [B, T, 3 * width]` (queries
    not yet scaled) to `[B, T, width]`, as transformers' Whisper encoder computes it."""
    kernel = kernels() if _fits_encoder_kernel(qkv, heads) else None
    if kernel is not None and kernel.encoder_attention_supported():
        return kernel.encoder_attention(qkv, heads)
    width = qkv.shape[2] // 3
    q, k, v = qkv.split(width, dim=-1)
    q = q * (width // heads) ** -0.5  # before the product, as transformers does: the same roundings
    attended = F.scaled_dot_product_attention(
        _split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads), scale=1.0
    )
    return _merge_heads(attended)


def _fits_encoder_kernel(qkv: Tensor, heads: int) -> bool:
    return (
        qkv.device.type == "cpu"
        and qkv.dtype == torch.float32
        and qkv.dim() == 3
        and qkv.shape[1] > 0
        and qkv.shape[2] == 3 * heads * _HEAD_DIM
        and qkv.is_contiguous()
        and not (torch.is_grad_enabled() and qkv.requires_grad)
    )


def _no_backward(*tensors: Tensor) -> bool:
    """Training goes through PyTorch's attention, which has a backward."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _fits_self_kernel(qkv: Tensor, cache_k: Tensor, cache_v: Tensor, start: Tensor) -> bool:
    tensors = (qkv, cache_k, cache_v, start)
    return (
        all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)
        and all(t.dtype == torch.float32 for t in (qkv, cache_k, cache_v))
        and start.dtype == torch.int64
        and cache_k.dim() == 4
        and cache_k.shape[-1] == _HEAD_DIM
        and qkv.dim() == 3
        and qkv.shape[2] == 3 * cache_k.shape[1] * _HEAD_DIM
        and _no_backward(*tensors)
    )


def _fits_cross_kernel(q: Tensor, k: Tensor, v: Tensor, frames: Tensor | None) -> bool:
    return (
        all(t.device.type == "cpu" for t in (q, k, v))
        and (frames is None or (frames.dtype == torch.int64 and frames.is_contiguous()))
        and q.dtype == torch.float32
        and k.dtype == v.dtype
        and k.dtype in (torch.float32, torch.bfloat16)
        and q.dim() == 3
        and k.dim() == 4
        and k.shape[-1] == _HEAD_DIM
        and k.shape[2] > 0  # no frames: PyTorch's answer, whatever it is
        and q.shape[0] == k.shape[0]
        and q.shape[2] == k.shape[1] * _HEAD_DIM
        and k.is_contiguous()
        and v.is_contiguous()
        and _no_backward(q, k, v)
    )
