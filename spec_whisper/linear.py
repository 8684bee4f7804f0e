"""Matrix products for decoder steps that are bound by reading weights: fp32 through our few-row
kernel or oneDNN, and int8 through fbgemm."""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cpu_kernels import kernels

__all__ = [
    "FastLinear",
    "FewRowsLinear",
    "Int8Linear",
    "decoder_linear",
    "draft_linear",
    "fuse_linears",
    "int8_available",
    "many_rows_linear",
    "prepacking_pays_for_many_rows",
    "use_int8_activations",
]

_int8_activations = True


def use_int8_activations(enabled: bool) -> None:
    """Let `draft_linear` round an assistant's activations to int8 where VNNI runs them, or not
    (benchmarks compare both in one run). Products choose when their weights are packed."""
    global _int8_activations
    _int8_activations = enabled


class FastLinear:
    """`y = x @ W.T + b` with weights prepacked for oneDNN on CPU in fp32.

    At batch 1 a decoder step is bound by memory bandwidth. PyTorch's default fp32 path costs
    about 4x more for 5 input rows than for 1 on the 51,865 x 512 vocabulary projection, which
    would make verifying a draft as dear as decoding it token by token; oneDNN's prepacked inner
    product reads the weights once for all rows (measured here: 1 row 4.2 ms, 5 rows 5.4 ms).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, prepack: bool = True) -> None:
        """`prepack=False`: PyTorch's default product (`many_rows_linear` chooses)."""
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else bias.detach().contiguous()
        self.packed = prepack and self.prepackable(weight)
        weight = weight.detach().contiguous()
        # The batch-size hint only picks oneDNN's blocking; 8 was as fast as any for 1..64 rows.
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, 8) if self.packed else weight

    @staticmethod
    def prepackable(weight: Tensor) -> bool:
        """Whether oneDNN can prepack these weights (fp32 on a CPU); others take PyTorch's product."""
        return (
            weight.device.type == "cpu"
            and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
        )

    def __call__(self, x: Tensor) -> Tensor:
        if not self.packed:
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)


class FewRowsLinear:
    """`y = x @ W.T + b` for a decoder pass's few rows (`csrc/few_rows_linear.cpp`).

    The weights are packed once in blocks of 64 outputs and read once per call, whatever the rows:
    a 4-row verify pass costs about what a 1-row greedy pass does, and each row's result has the
    same bits however many rows share the call (measured on whisper-base's six decoder layers:
    docs/benchmarks.md). Weights that fp16 holds exactly, as Whisper's published checkpoints are,
    are kept in fp16 and widened in the product: half the bytes for the same bits. With `int8` the
    weights are rounded per output row as `Int8Linear`'s and widened the same way, activations
    staying fp32: a quarter of the bytes, for an assistant's drafts. With `int8_activations` as
    well, each row of activations is rounded to int8 too and the products run on AVX-512 VNNI's byte
    dot products (`bytes_available`): a quarter of the instructions, results no longer the fp32
    product's, so for drafts only. Needs the CPU kernels built with AVX-512, or with AVX2, FMA and F16C
    (x86-64-v3), where each output is summed in the same order (`available`).
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        int8: bool = False,
        fp16: bool = True,
        stream: bool = False,
        int8_activations: bool = False,
    ) -> None:
        """`stream`: prefetch the weights as non-temporal data (a main model's, read once per pass).
        `fp16=False` keeps fp32 weights even where fp16 holds them (benchmarks compare both)."""
        if int8_activations:
            assert int8 and self.bytes_available(), "int8 activations need int8 weights and VNNI"
        kernel = kernels()
        assert kernel is not None and self.available(weight), "FewRowsLinear.available() is false"
        self.kernel = kernel
        self.out_features, self.in_features = weight.shape
        weight = weight.detach().float().contiguous()
        bias = torch.zeros_like(weight[:, 0]) if bias is None else bias.detach().float().contiguous()
        step = None
        if int8:
            step = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
            weight = torch.round(weight / step[:, None]).clamp(-127, 127).to(torch.int8)
        elif fp16 and torch.equal(weight.half().float(), weight):
            weight = weight.half()
        self.stream = stream
        self.step = step  # int8: each output row's rounding step
        self.int8_activations = int8_activations
        if int8_activations:  # `scale` holds each output's step and its weights' sum
            self.packed, self.bias, self.scale = kernel.few_rows_linear_pack_bytes(weight, bias, step)
        else:  # `scale` comes back as None for fp32 and fp16 weights.
            self.packed, self.bias, self.scale = kernel.few_rows_linear_pack(weight, bias, step)

    @staticmethod
    def available(weight: Tensor) -> bool:
        kernel = kernels() if weight.device.type == "cpu" and weight.dtype == torch.float32 else None
        return kernel is not None and kernel.few_rows_linear_supported()

    @staticmethod
    def bytes_available() -> bool:
        """Whether int8 weights can meet int8 activations here (the kernels built with AVX-512 VNNI)."""
        kernel = kernels()
        return kernel is not None and kernel.few_rows_linear_bytes_supported()

    def state(self) -> tuple[Tensor, Tensor, Tensor | None, int, bool]:
        """What the kernel's calls take besides the rows: a C++ caller's copy (`csrc/decoder_layer.cpp`)."""
        return self.packed, self.bias, self.scale, self.out_features, self.stream

    def __call__(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        y = self.kernel.few_rows_linear(
            rows, self.packed, self.bias, self.scale, self.out_features, self.stream
        )
        return y.view(*x.shape[:-1], self.out_features)


def many_rows_linear(weight: Tensor, bias: Tensor | None) -> FastLinear:
    """An fp32 product over many rows (an encoder's 1500 frames, cross-attention's keys and values):
    oneDNN's prepacked path where it measured faster on this machine, else PyTorch's default (MKL).
    Weights oneDNN cannot prepack (a GPU's, fp16) take PyTorch's without timing anything."""
    return FastLinear(
        weight, bias, prepack=FastLinear.prepackable(weight) and prepacking_pays_for_many_rows()
    )


def prepacking_pays_for_many_rows() -> bool:
    """Whether oneDNN's prepacked product beats PyTorch's default on an encoder's feed-forward shape
    (1500 rows, 512 -> 2048), timed here once per thread count. The answer depends on the CPU: on
    2 cores with AVX-512 oneDNN ran about 400 GFLOP/s against MKL's 170; on an AMD Zen 3 with AVX2
    MKL was the faster, and whisper-base's encoder took 0.563 s a window on MKL's products against
    0.610 s on oneDNN's (`scripts/bench_encoder.py`, docs/benchmarks.md)."""
    return _prepacking_pays(torch.get_num_threads())


@functools.cache
def _prepacking_pays(threads: int) -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(2048, 512, generator=generator) * 512**-0.5
    x, bias = torch.randn(1500, 512, generator=generator), torch.zeros(2048)
    ways = {True: FastLinear(weight, bias, prepack=True), False: FastLinear(weight, bias, prepack=False)}
    best = dict.fromkeys(ways, float("inf"))
    with torch.inference_mode():
        for _ in range(3):  # taking turns, best of three: a busy moment spoils one try, not the choice
            for prepack, linear in ways.items():
                began = time.perf_counter()
                linear(x)
                best[prepack] = min(best[prepack], time.perf_counter() - began)
    return best[True] <= best[False]


def decoder_linear(weight: Tensor, bias: Tensor | None, stream: bool = False) -> FewRowsLinear | FastLinear:
    """The fp32 product for decoder passes: the few-row kernel where it is built, else oneDNN's."""
    if FewRowsLinear.available(weight):
        return FewRowsLinear(weight, bias, stream=stream)
    return FastLinear(weight, bias)


def draft_linear(weight: Tensor, bias: Tensor | None) -> FewRowsLinear | Int8Linear | FastLinear:
    """An assistant's approximate product: int8 weights in the few-row kernel where it is built (meeting
    int8 activations where the CPU has VNNI), else fbgemm's int8 product, else fp32."""
    if FewRowsLinear.available(weight):
        # The kernel rounds activations 16 at a time.
        bytes_ = _int8_activations and weight.shape[1] % 16 == 0 and FewRowsLinear.bytes_available()
        return FewRowsLinear(weight, bias, int8=True, int8_activations=bytes_)
    return Int8Linear(weight, bias) if int8_available(weight) else FastLinear(weight, bias)


def fuse_linears(*linears: nn.Linear, kind: Callable[[Tensor, Tensor | None], Linear] = FastLinear) -> Linear:
    """One product for several linears of the same input (attention's q, k, v): their outputs side by
    side. A missing bias is zeros, which adds nothing."""
    weight = torch.cat([lin.weight for lin in linears])
    biases = [lin.bias if lin.bias is not None else torch.zeros_like(lin.weight[:, 0]) for lin in linears]
    return kind(weight, torch.cat(biases))


def int8_available(weight: Tensor) -> bool:
    """fbgemm's int8 products run on x86 CPUs only."""
    engines = torch.backends.quantized.supported_engines
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and "fbgemm" in engines


class Int8Linear:
    """`x @ W.T` with W rounded per output row to int8 (`W ~ step[:, None] * q`, |error| <= step / 2).

    fbgemm reads a quarter of the fp32 bytes (measured here on the 51,865 x 512 projection: 1 row
    0.38 ms against 3.7 ms in fp32, 10 rows 1.6 ms against 5 ms). The activations are quantized
    per call, as dynamic quantization does. An assistant's products where the few-row kernel is not
    built, and its once-per-request cross-attention keys and values.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        weight = weight.detach().float()
        self.out_features, self.in_features = weight.shape
        self.step = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        self.q = torch.round(weight / self.step[:, None]).clamp(-127, 127).to(torch.int8)
        self.bias = None if bias is None else bias.detach().float().contiguous()
        with warnings.catch_warnings():  # quantized tensors are deprecated, fbgemm's kernels are not yet
            warnings.simplefilter("ignore")
            zeros = torch.zeros(self.out_features, dtype=torch.long)
            quantized = torch._make_per_channel_quantized_tensor(self.q, self.step.double(), zeros, 0)
            self.packed = torch.ops.quantized.linear_prepack(quantized, self.bias)

    def __call__(self, x: Tensor) -> Tensor:
        # reduce_range: 7-bit activations, so AVX2's 16-bit pair sums cannot saturate.
        rows = x.reshape(-1, self.in_features)
        y = torch.ops.quantized.linear_dynamic(rows, self.packed, True)
        return y.view(*x.shape[:-1], self.out_features)


Linear = FastLinear | FewRowsLinear | Int8Linear
