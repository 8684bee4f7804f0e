"""A decoder layer's pass in one kernel call gives the bits of the operator-by-operator path."""

from __future__ import annotations

import pytest
import torch
from transformers import WhisperConfig, WhisperForCausalLM

from spec_whisper.decoder import WhisperDecoderRunner, compaction_order
from spec_whisper.linear import FastLinear, FewRowsLinear

WIDTH, FRAMES = 128, 50  # two heads of 64, as every Whisper size has


def _decoder(seed: int = 0) -> WhisperForCausalLM:
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=51865,
        d_model=WIDTH,
        decoder_layers=2,
        decoder_attention_heads=2,
        decoder_ffn_dim=4 * WIDTH,
        max_target_positions=64,
    )
    return WhisperForCausalLM(config).eval()


def _runner(int8: bool) -> WhisperDecoderRunner:
    model = _decoder()
    kwargs = (
        {"shortlist": torch.arange(0, 51865, 7), "int8": True, "cross_dtype": torch.bfloat16} if int8 else {}
    )
    runner = WhisperDecoderRunner(model.model.decoder, model.proj_out.weight, **kwargs)
    if runner.fused is None:
        pytest.skip("the few-row kernel is not built on this machine (it needs AVX-512)")
    assert isinstance(runner.layers[0].fc1, FewRowsLinear)
    return runner


class _Counted:
    """A fused layer that counts its calls: the fused path must be the one taken."""

    def __init__(self, layer) -> None:
        self.layer, self.calls = layer, 0

    def __call__(self, *args):
        self.calls += 1
        return self.layer(*args)


def _fused_then_plain(runner: WhisperDecoderRunner, run):
    """`run()` through the fused layers (checked to be taken), then through the operator path."""
    fused_layers = runner.fused
    runner.fused = [_Counted(layer) for layer in fused_layers]
    fused = run()
    assert [layer.calls for layer in runner.fused] == [1] * len(fused_layers)
    runner.fused = None
    try:
        plain = run()
    finally:
        runner.fused = fused_layers
    return fused, plain


def _clone(cache):
    return type(cache)(
        cache.self_k.clone(),
        cache.self_v.clone(),
        tuple(t.clone() for t in cache.cross_k),
        tuple(t.clone() for t in cache.cross_v),
        cache.cross_frames,
    )


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize(
    ("batch", "steps", "own_frames"), [(1, 1, False), (1, 5, False), (3, 1, True), (4, 3, True)]
)
def test_the_fused_layers_give_the_bits_and_the_cache_of_the_operator_path(
    int8: bool, batch: int, steps: int, own_frames: bool
) -> None:
    runner = _runner(int8)
    torch.manual_seed(1)
    encoded = torch.randn(batch, FRAMES, WIDTH)
    tokens = torch.randint(0, 51865, (batch, 9))
    start = torch.zeros(batch, dtype=torch.long)
    frames = torch.tensor([FRAMES - 3, 5, FRAMES - 1, 1][:batch]) if own_frames else None  # each row its own
    with torch.inference_mode():
        fused_cache = runner.new_cache(encoded, frames=frames)
        runner.states(tokens, start, fused_cache)  # a prompt, then a pass of `steps` tokens per row
        plain_cache = _clone(fused_cache)
        after = torch.tensor([9, 7, 9, 4][:batch])  # rows at different positions, as drafts leave them
        new = torch.randint(0, 51865, (batch, steps))
        caches = iter([fused_cache, plain_cache])
        fused, plain = _fused_then_plain(runner, lambda: runner.states(new, after, next(caches)))
    assert torch.equal(fused, plain)
    assert torch.equal(fused_cache.self_k, plain_cache.self_k) and torch.equal(
        fused_cache.self_v, plain_cache.self_v
    )


def test_a_compacted_cache_takes_the_fused_path_and_the_same_bits() -> None:
    runner = _runner(int8=False)
    torch.manual_seed(2)
    encoded = torch.randn(3, FRAMES, WIDTH)
    tokens = torch.randint(0, 51865, (3, 6))
    with torch.inference_mode():
        cache = runner.new_cache(encoded)
        runner.states(tokens, torch.zeros(3, dtype=torch.long), cache)
        order = compaction_order(torch.tensor([True, False, False]))
        kept = cache.select(order)
        assert not kept.self_k.is_contiguous()  # fewer rows of each layer, as decoding leaves them
        new, at = tokens[order, :2], torch.full((2,), 6)
        copy = _clone(kept)
        caches = iter([kept, copy])
        fused, plain = _fused_then_plain(runner, lambda: runner.states(new, at, next(caches)))
    assert torch.equal(kept.self_k, copy.self_k) and torch.equal(kept.self_v, copy.self_v)
    assert torch.equal(fused, plain)


def test_layers_with_other_products_take_the_operator_path() -> None:
    runner = _runner(int8=False)
    hf = _decoder().model.decoder.layers[1]
    runner.layers[1].fc2 = FastLinear(hf.fc2.weight, hf.fc2.bias)  # as a benchmark swaps products
    runner.fuse_layers()
    assert runner.fused is None
