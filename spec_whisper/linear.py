"""Matrix products for decoder steps that are bound by reading weights: fp32 through oneDNN, and int8."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FastLinear", "Int8Linear", "fuse_linears", "int8_available"]


class FastLinear:
    """`y = x @ W.T + b` with weights prepacked for oneDNN on CPU in fp32.

    At batch 1 a decoder step is bound by memory bandwidth. PyTorch's default fp32 path costs
    about 4x more for 5 input rows than for 1 on the 51,865 x 512 vocabulary projection, which
    would make verifying a draft as dear as decoding it token by token; oneDNN's prepacked inner
    product reads the weights once for all rows (measured here: 1 row 4.2 ms, 5 rows 5.4 ms).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else bias.detach().contiguous()
        self.packed = (
            weight.device.type == "cpu"
            and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
        )
        weight = weight.detach().contiguous()
        # The batch-size hint only picks oneDNN's blocking; 8 was as fast as any for 1..64 rows.
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, 8) if self.packed else weight

    def __call__(self, x: Tensor) -> Tensor:
        if not self.packed:
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)


def fuse_linears(
    *linears: nn.Linear, kind: type[FastLinear | Int8Linear] = FastLinear
) -> FastLinear | Int8Linear:
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
    0.38 ms against 3.7 ms in fp32, 10 rows 1.6 ms against 5 ms). `approximate` quantizes the
    activations per call, as dynamic quantization does; `on_grid` takes activations that already lie
    on a power-of-two grid, for which the product is exact in int32 and only the final scaling rounds.
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
        return self.approximate(x)

    def approximate(self, x: Tensor) -> Tensor:
        # reduce_range: 7-bit activations, so AVX2's 16-bit pair sums cannot saturate.
        rows = x.reshape(-1, self.in_features)
        y = torch.ops.quantized.linear_dynamic(rows, self.packed, True)
        return y.view(*x.shape[:-1], self.out_features)

    def on_grid(self, x: Tensor, scale: float) -> Tensor:
        """`x` (rows of integers in [-63, 63] times the power of two `scale`) times the int8 weights."""
        return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x, scale, 64, self.packed)
