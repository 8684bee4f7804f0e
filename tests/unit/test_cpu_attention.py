"""The CPU attention kernels against PyTorch's attention."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from spec_whisper.cpu_attention import cross_attention, encoder_attention, self_attention
from spec_whisper.cpu_kernels import kernels, kernels_available, use_kernels

HEADS = 8


def _inputs(batch: int, queries: int, frames: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Queries with merged heads `[B, T, 512]`, not yet scaled, and keys and values `[B, 8, L, 64]`."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, queries, HEADS * 64, generator=generator) * 2.4
    k, v = (torch.randn(batch, HEADS, frames, 64, generator=generator) for _ in range(2))
    return q, k, v


def _split(x: torch.Tensor) -> torch.Tensor:
    return x.view(x.shape[0], x.shape[1], HEADS, -1).transpose(1, 2)


def _reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    attended = F.scaled_dot_product_attention(_split(q) * 64**-0.5, k, v, attn_mask=mask, scale=1.0)
    return attended.transpose(1, 2).reshape(q.shape)


def _without_kernel(run, *args):
    use_kernels(False)
    try:
        return run(*args)
    finally:
        use_kernels(True)


def test_the_kernel_builds_on_this_machine() -> None:
    # CI machines have a C++ compiler: a silent fallback to PyTorch would hide a broken build.
    assert kernels_available()


@pytest.mark.parametrize(("batch", "queries", "frames"), [(1, 1, 1500), (3, 4, 1500), (2, 17, 7), (1, 2, 1)])
def test_cross_attention_equals_pytorch_attention(batch: int, queries: int, frames: int) -> None:
    q, k, v = _inputs(batch, queries, frames)
    expected = _reference(q, k, v)
    torch.testing.assert_close(cross_attention(q, k, v), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_without_kernel(cross_attention, q, k, v), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_row_attends_to_its_own_frames(dtype: torch.dtype) -> None:
    # An assistant attending to each window's audio: row b sees its first frames[b] keys only.
    q, k, v = _inputs(3, 2, 40)
    k, v = k.to(dtype), v.to(dtype)
    frames = torch.tensor([40, 7, 1])
    mask = (torch.arange(40) < frames[:, None])[:, None, None]
    expected = _reference(q, k.float(), v.float(), mask)
    torch.testing.assert_close(cross_attention(q, k, v, frames), expected, rtol=1e-5, atol=1e-5)
    fallback = _without_kernel(cross_attention, q, k, v, frames)
    torch.testing.assert_close(fallback, expected, rtol=1e-5, atol=1e-5)
    # The same bits as the row alone over only its own frames: what lies past them is never read.
    alone = cross_attention(q[1:2], k[1:2, :, :7].contiguous(), v[1:2, :, :7].contiguous())
    assert torch.equal(cross_attention(q, k, v, frames)[1:2], alone)


def test_a_query_gets_the_same_bits_however_many_share_the_call() -> None:
    # A greedy pass (one query) and a verify pass (several) must agree for exactness to be robust.
    q, k, v = _inputs(2, 5, 1500)
    together = cross_attention(q, k, v)
    for t in range(5):
        assert torch.equal(cross_attention(q[:, t : t + 1].contiguous(), k, v), together[:, t : t + 1])


@pytest.mark.parametrize(("batch", "queries", "frames"), [(1, 1, 1500), (3, 2, 37)])
def test_bf16_keys_and_values_are_widened_exactly(batch: int, queries: int, frames: int) -> None:
    # An assistant's bf16 copy: the kernel must compute what fp32 attention does over the same
    # (rounded) values, and the fallback must accept them too.
    q, k, v = _inputs(batch, queries, frames)
    k16, v16 = k.bfloat16(), v.bfloat16()
    expected = _reference(q, k16.float(), v16.float())
    torch.testing.assert_close(cross_attention(q, k16, v16), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_without_kernel(cross_attention, q, k16, v16), expected, rtol=1e-5, atol=1e-5)
    # Rounding the keys and values moves the result, but only a little.
    torch.testing.assert_close(cross_attention(q, k16, v16), cross_attention(q, k, v), rtol=0, atol=2e-2)


def _pass(batch: int, queries: int, seed: int = 2) -> tuple[torch.Tensor, ...]:
    """A decoder pass: fused `qkv [B, T, 3 * 512]`, one layer's cache `[B, 8, 448, 64]` holding stale
    values, and each row's first position."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 40, (batch,), generator=generator)
    qkv = torch.randn(batch, queries, 3 * HEADS * 64, generator=generator) * 2.4
    cache_k, cache_v = (torch.randn(batch, HEADS, 448, 64, generator=generator) for _ in range(2))
    return qkv, cache_k, cache_v, start


@pytest.mark.parametrize(("batch", "queries"), [(1, 1), (1, 5), (4, 1), (3, 17)])
def test_self_attention_writes_the_cache_and_stops_each_query_at_its_own_position(
    batch: int, queries: int
) -> None:
    qkv, cache_k, cache_v, start = _pass(batch, queries)
    q, k, v = qkv.split(HEADS * 64, dim=-1)
    positions = start[:, None] + torch.arange(queries)
    expected_k, expected_v = cache_k.clone(), cache_v.clone()
    rows = torch.arange(batch)[:, None]
    expected_k[rows, :, positions] = _split(k).transpose(1, 2)
    expected_v[rows, :, positions] = _split(v).transpose(1, 2)
    length = int(positions.max()) + 1
    visible = torch.arange(length) <= positions[..., None]
    expected = _reference(q, expected_k[:, :, :length], expected_v[:, :, :length], visible[:, None])
    for kernel in (True, False):
        k_cache, v_cache = cache_k.clone(), cache_v.clone()
        run = self_attention if kernel else lambda *a: _without_kernel(self_attention, *a)
        attended = run(qkv, k_cache, v_cache, start, length)
        assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)
        torch.testing.assert_close(attended, expected, rtol=1e-5, atol=1e-5)
    # The same bits for a query alone (a greedy pass) as among the others of a verify pass.
    together = self_attention(qkv, cache_k, cache_v, start, length)
    for t in range(queries):
        alone = self_attention(qkv[:, t : t + 1].contiguous(), cache_k, cache_v, start + t, length)
        assert torch.equal(alone, together[:, t : t + 1])


def test_self_attention_refuses_tokens_past_the_cache() -> None:
    qkv, cache_k, cache_v, start = _pass(2, 3)
    with pytest.raises(RuntimeError, match="past the cache"):
        self_attention(qkv, cache_k, cache_v, start + 446, 448)


def test_other_shapes_and_layouts_fall_back() -> None:
    q, k, v = _inputs(1, 3, 50)
    expected = _reference(q, k, v)
    strided_q = torch.cat([q, q], dim=-1)[..., : q.shape[-1]]  # copied for the kernel
    assert not strided_q.is_contiguous()
    torch.testing.assert_close(cross_attention(strided_q, k, v), expected)
    strided_k = k.transpose(2, 3).contiguous().transpose(2, 3)
    torch.testing.assert_close(cross_attention(q, strided_k, v), expected)
    small = torch.randn(1, 3, 64), torch.randn(1, 2, 9, 32), torch.randn(1, 2, 9, 32)  # heads of 32
    expected = F.scaled_dot_product_attention(
        small[0].view(1, 3, 2, 32).transpose(1, 2) * 32**-0.5, *small[1:], scale=1.0
    )
    torch.testing.assert_close(cross_attention(*small), expected.transpose(1, 2).reshape(1, 3, 64))
    no_frames = q, k[:, :, :0].contiguous(), v[:, :, :0].contiguous()
    torch.testing.assert_close(cross_attention(*no_frames), _reference(*no_frames), equal_nan=True)


def test_training_keeps_gradients() -> None:
    q, k, v = (t.requires_grad_() for t in _inputs(1, 2, 20))
    cross_attention(q, k, v).sum().backward()
    assert q.grad is not None and k.grad is not None


def test_the_encoder_kernel_is_built_where_the_cpu_has_avx2() -> None:
    # Its tiles are sized for AVX-512 and for AVX2 with FMA (x86-64-v3), what CI machines have.
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if platform.machine() == "x86_64" and cpuinfo.exists() else set()
    if not {"avx2", "fma"} <= flags:
        pytest.skip("needs an x86-64 CPU with AVX2 and FMA")
    assert kernels().encoder_attention_supported()


def _encoder_reference(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    return _without_kernel(encoder_attention, qkv, heads)


@pytest.mark.parametrize(("batch", "frames"), [(1, 1500), (2, 37), (1, 5), (3, 1), (1, 600)])
def test_encoder_attention_equals_pytorch_attention(batch: int, frames: int) -> None:
    # Frame counts that are no multiple of the kernel's query blocks (6), key tiles (16 or 32) or runs
    # of values (256).
    qkv = torch.randn(batch, frames, 3 * 512, generator=torch.Generator().manual_seed(1)) * 2
    expected = _encoder_reference(qkv, 8)
    torch.testing.assert_close(encoder_attention(qkv, 8), expected, rtol=1e-5, atol=2e-5)


def test_encoder_attention_falls_back_for_other_heads_and_training() -> None:
    qkv = torch.randn(1, 9, 3 * 96)  # heads of 32
    torch.testing.assert_close(encoder_attention(qkv, 3), _encoder_reference(qkv, 3))
    trained = torch.randn(1, 7, 3 * 128).requires_grad_()
    encoder_attention(trained, 2).sum().backward()
    assert trained.grad is not None
