"""The decoder's few-row fp32 product against float64 arithmetic and against itself across row counts."""

from __future__ import annotations

import pytest
import torch

from spec_whisper.linear import (
    FastLinear,
    FewRowsLinear,
    decoder_linear,
    many_rows_linear,
    prepacking_pays_for_many_rows,
)


def _weights(out_features: int, in_features: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator) * in_features**-0.5
    return weight, torch.randn(out_features, generator=generator)


def test_the_few_row_product_is_built_on_this_machine() -> None:
    # CI machines have AVX-512 and a compiler: a silent fallback to oneDNN would hide a broken build.
    weight, _ = _weights(64, 64)
    assert FewRowsLinear.available(weight)
    assert isinstance(decoder_linear(weight, None), FewRowsLinear)


@pytest.mark.parametrize("rows", [1, 3, 4, 7, 40])
@pytest.mark.parametrize(("out_features", "in_features"), [(512, 512), (100, 2048), (51865 // 8, 384)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_it_matches_float64_arithmetic(
    rows: int, out_features: int, in_features: int, with_bias: bool
) -> None:
    weight, bias = _weights(out_features, in_features)
    bias = bias if with_bias else None
    x = torch.randn(2, rows, in_features)
    y = FewRowsLinear(weight, bias)(x)
    expected = x.double() @ weight.double().T + (0 if bias is None else bias.double())
    assert y.shape == (2, rows, out_features) and y.dtype == torch.float32
    # Blocked summation: about as close to the exact sums as oneDNN's own fp32 product.
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=2e-5)
    oneDNN = FastLinear(weight, bias)(x)
    assert (y - oneDNN).abs().max() < 2e-5


def test_a_row_gets_the_same_bits_whatever_rows_share_the_call() -> None:
    # A greedy pass (1 row) and a verify pass (several) must agree bit for bit on the same row.
    weight, bias = _weights(1000, 512, seed=1)
    linear = FewRowsLinear(weight, bias)
    x = torch.randn(17, 512) * 3
    alone = torch.cat([linear(x[i : i + 1]) for i in range(len(x))])
    for rows in range(1, len(x) + 1):
        assert torch.equal(linear(x[:rows]), alone[:rows]), rows


def test_non_contiguous_inputs_and_no_rows() -> None:
    weight, bias = _weights(128, 64, seed=2)
    linear = FewRowsLinear(weight, bias)
    x = torch.randn(64, 5).T  # [5, 64], transposed
    assert torch.equal(linear(x), linear(x.contiguous()))
    assert linear(torch.empty(0, 64)).shape == (0, 128)


@pytest.mark.parametrize("rows", [1, 5])
def test_int8_weights_give_the_rounded_weights_product(rows: int) -> None:
    weight, bias = _weights(200, 512, seed=3)
    x = torch.randn(rows, 512)
    y = FewRowsLinear(weight, bias, int8=True)(x)
    step = weight.abs().amax(dim=1) / 127
    rounded = torch.round(weight / step[:, None]) * step[:, None]
    expected = x.double() @ rounded.double().T + bias.double()
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=2e-5)
    assert (y - FewRowsLinear(weight, bias)(x)).abs().max() > 1e-4  # rounded: not the fp32 product
    alone = torch.cat([FewRowsLinear(weight, bias, int8=True)(x[i : i + 1]) for i in range(rows)])
    assert torch.equal(y, alone)


def test_weights_that_fp16_holds_exactly_are_stored_in_fp16_with_the_same_bits() -> None:
    weight, bias = _weights(300, 512, seed=4)
    exact = weight.half().float()  # as Whisper's published fp16 checkpoints load
    x = torch.randn(3, 512)
    halved = FewRowsLinear(exact, bias)
    assert halved.packed.dtype == torch.float16
    assert FewRowsLinear(weight, bias).packed.dtype == torch.float32
    # The fp32 kernel over the same values, packed in fp32 (an fp16-exact matrix plus one inexact row).
    nudged = torch.cat([exact, weight[:1]])
    wide = FewRowsLinear(nudged, torch.cat([bias, bias[:1]]))
    assert wide.packed.dtype == torch.float32
    assert torch.equal(halved(x), wide(x)[:, :300])


def test_streaming_the_weights_changes_no_bits() -> None:
    weight, bias = _weights(700, 512, seed=5)
    x = torch.randn(6, 512)
    for rows in range(1, 7):
        streamed = FewRowsLinear(weight.half().float(), bias, stream=True)(x[:rows])
        assert torch.equal(streamed, FewRowsLinear(weight.half().float(), bias)(x[:rows]))


def _rounded_rows(x: torch.Tensor) -> torch.Tensor:
    step = x.abs().amax(dim=-1, keepdim=True) / 127
    return torch.round(x / step).clamp(-127, 127) * step


@pytest.mark.skipif(not FewRowsLinear.bytes_available(), reason="needs AVX-512 VNNI")
@pytest.mark.parametrize("rows", [1, 3, 4, 9])
@pytest.mark.parametrize(("out_features", "in_features"), [(200, 512), (100, 1408), (12288 // 4 + 5, 512)])
def test_int8_activations_give_the_product_of_both_rounded(
    rows: int, out_features: int, in_features: int
) -> None:
    weight, bias = _weights(out_features, in_features, seed=6)
    x = torch.randn(rows, in_features) * 2
    x[0, 7] = 40.0  # an outlier sets its row's step, and only its row's
    linear = FewRowsLinear(weight, bias, int8=True, int8_activations=True)
    y = linear(x)
    step = weight.abs().amax(dim=1) / 127
    rounded = torch.round(weight / step[:, None]) * step[:, None]
    expected = _rounded_rows(x).double() @ rounded.double().T + bias.double()
    # The kernel divides by a row's step as a product with its inverse: an element at a rounding
    # tie may land one step off, moving its row by at most that step times a weight.
    one_step = x.abs().amax(dim=-1, keepdim=True).double() / 127 * rounded.abs().max()
    assert ((y.double() - expected).abs() <= 2 * one_step + 1e-5).all()
    weights_only = FewRowsLinear(weight, bias, int8=True)(x)
    assert (y - weights_only).abs().max() > 1e-3  # the activations were rounded too
    alone = torch.cat([linear(x[i : i + 1]) for i in range(rows)])
    assert torch.equal(y, alone)  # integer sums: a row's result does not depend on its neighbours


@pytest.mark.skipif(not FewRowsLinear.bytes_available(), reason="needs AVX-512 VNNI")
def test_int8_activations_handle_zero_rows_and_stay_close_to_fp32() -> None:
    weight, bias = _weights(256, 512, seed=7)
    linear = FewRowsLinear(weight, bias, int8=True, int8_activations=True)
    zero = linear(torch.zeros(1, 512))
    assert torch.equal(zero, bias[None])
    x = torch.randn(4, 512)
    exact = x @ weight.T + bias
    assert ((linear(x) - exact).norm() / exact.norm()) < 0.02


def test_a_many_row_product_takes_the_path_measured_faster_and_both_agree() -> None:
    weight, bias = _weights(384, 256, seed=8)
    chosen = prepacking_pays_for_many_rows()
    assert prepacking_pays_for_many_rows() is chosen  # timed once per thread count, then kept
    linear = many_rows_linear(weight, bias)
    assert linear.packed == (chosen and torch.backends.mkldnn.is_available())
    x = torch.randn(300, 256)
    expected = x.double() @ weight.double().T + bias.double()
    for prepack in (True, False):
        y = FastLinear(weight, bias, prepack=prepack)(x)
        torch.testing.assert_close(y.double(), expected, rtol=0, atol=2e-5)
    torch.testing.assert_close(linear(x).double(), expected, rtol=0, atol=2e-5)
