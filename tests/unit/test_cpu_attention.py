"""The CPU attention kernels against PyTorch's attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spec_whisper.cpu_attention import cross_attention, encoder_attention, kernel_available, use_kernel


def _inputs(batch: int, queries: int, frames: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, 8, queries, 64, generator=generator) * 0.3
    k, v = (torch.randn(batch, 8, frames, 64, generator=generator) for _ in range(2))
    return q, k, v


def test_the_kernel_builds_on_this_machine() -> None:
    # CI machines have a C++ compiler: a silent fallback to PyTorch would hide a broken build.
    assert kernel_available()


@pytest.mark.parametrize(("batch", "queries", "frames"), [(1, 1, 1500), (3, 4, 1500), (2, 17, 7), (1, 2, 1)])
def test_equals_pytorch_attention(batch: int, queries: int, frames: int) -> None:
    q, k, v = _inputs(batch, queries, frames)
    expected = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    torch.testing.assert_close(cross_attention(q, k, v), expected, rtol=1e-5, atol=1e-5)


def test_a_query_gets_the_same_bits_however_many_share_the_call() -> None:
    # A greedy pass (one query) and a verify pass (several) must agree for exactness to be robust.
    q, k, v = _inputs(2, 5, 1500)
    together = cross_attention(q, k, v)
    for t in range(5):
        assert torch.equal(cross_attention(q[:, :, t : t + 1].contiguous(), k, v), together[:, :, t : t + 1])


@pytest.mark.parametrize(("batch", "queries", "frames"), [(1, 1, 1500), (3, 2, 37)])
def test_bf16_keys_and_values_are_widened_exactly(batch: int, queries: int, frames: int) -> None:
    # An assistant's bf16 copy: the kernel must compute what fp32 attention does over the same
    # (rounded) values, and the fallback must accept them too.
    q, k, v = _inputs(batch, queries, frames)
    k16, v16 = k.bfloat16(), v.bfloat16()
    expected = F.scaled_dot_product_attention(q, k16.float(), v16.float(), scale=1.0)
    torch.testing.assert_close(cross_attention(q, k16, v16), expected, rtol=1e-5, atol=1e-5)
    use_kernel(False)
    try:
        torch.testing.assert_close(cross_attention(q, k16, v16), expected, rtol=1e-5, atol=1e-5)
    finally:
        use_kernel(True)
    # Rounding the keys and values moves the result, but only a little.
    torch.testing.assert_close(cross_attention(q, k16, v16), cross_attention(q, k, v), rtol=0, atol=2e-2)


def test_strided_queries_and_other_shapes_fall_back_or_are_copied() -> None:
    q, k, v = _inputs(1, 3, 50)
    transposed_q = q.transpose(1, 2).contiguous().transpose(1, 2)  # the decoder's own layout
    expected = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    torch.testing.assert_close(cross_attention(transposed_q, k, v), expected)
    strided_k = k.transpose(2, 3).contiguous().transpose(2, 3)
    torch.testing.assert_close(cross_attention(q, strided_k, v), expected)
    small = torch.randn(1, 2, 3, 32), torch.randn(1, 2, 9, 32), torch.randn(1, 2, 9, 32)
    torch.testing.assert_close(cross_attention(*small), F.scaled_dot_product_attention(*small, scale=1.0))
    no_frames = q, k[:, :, :0].contiguous(), v[:, :, :0].contiguous()
    expected = F.scaled_dot_product_attention(*no_frames, scale=1.0)
    torch.testing.assert_close(cross_attention(*no_frames), expected, equal_nan=True)


def test_training_keeps_gradients() -> None:
    q, k, v = (t.requires_grad_() for t in _inputs(1, 2, 20))
    cross_attention(q, k, v).sum().backward()
    assert q.grad is not None and k.grad is not None


def _encoder_reference(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    use_kernel(False)
    try:
        return encoder_attention(qkv, heads)
    finally:
        use_kernel(True)


@pytest.mark.parametrize(("batch", "frames"), [(1, 1500), (2, 37), (1, 5), (3, 1)])
def test_encoder_attention_equals_pytorch_attention(batch: int, frames: int) -> None:
    # Frame counts that are no multiple of the kernel's query blocks (6) or key tiles (32).
    qkv = torch.randn(batch, frames, 3 * 512, generator=torch.Generator().manual_seed(1)) * 2
    expected = _encoder_reference(qkv, 8)
    torch.testing.assert_close(encoder_attention(qkv, 8), expected, rtol=1e-5, atol=2e-5)


def test_encoder_attention_falls_back_for_other_heads_and_training() -> None:
    qkv = torch.randn(1, 9, 3 * 96)  # heads of 32
    torch.testing.assert_close(encoder_attention(qkv, 3), _encoder_reference(qkv, 3))
    trained = torch.randn(1, 7, 3 * 128).requires_grad_()
    encoder_attention(trained, 2).sum().backward()
    assert trained.grad is not None
