"""Cross-attention over the encoder's frames: a small C++ kernel on CPU, PyTorch's elsewhere.

The kernel (`csrc/cross_attention.cpp`) reads each cross-attention key and value once for all the
queries of a pass, where PyTorch's CPU attention packs blocks of keys once a pass brings several
(measured here at batch 8, six layers: 1 query 7.1 ms against PyTorch's 15.8 ms, 3 queries 11.1 ms
against 23.8 ms; docs/benchmarks.md).
It is compiled on first use on the machine that runs it (about 25 s; `torch.utils.cpp_extension`
caches the build) and covers fp32 CPU tensors with heads of 64, every Whisper size. Anything else,
a machine without a C++ compiler, or SPEC_WHISPER_CPU_KERNEL=0 uses `scaled_dot_product_attention`.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cross_attention", "kernel_available", "use_kernel"]

_SOURCE = Path(__file__).resolve().parent / "csrc" / "cross_attention.cpp"
_HEAD_DIM = 64


_enabled = os.environ.get("SPEC_WHISPER_CPU_KERNEL", "1") != "0"


def use_kernel(enabled: bool) -> None:
    """Switch the kernel on or off for this process (benchmarks compare both in one run)."""
    global _enabled
    _enabled = enabled


@functools.cache
def _kernel() -> ModuleType | None:
    from torch.utils.cpp_extension import load  # imports setuptools: only when the kernel is wanted

    try:
        import ninja  # the PyPI build tool: put it on PATH, where the build looks (venvs are not)

        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
    except ImportError:
        pass
    try:
        return load(
            name="spec_whisper_cross_attention",
            sources=[str(_SOURCE)],
            # -march=native: built where it runs. Fast math vectorises exp(); infinities stay defined.
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffast-math", "-fno-finite-math-only"],
            verbose=False,
        )
    except Exception as error:  # no compiler or no ninja: correct, only slower
        warnings.warn(f"CPU cross-attention kernel unavailable, using PyTorch's: {error}", stacklevel=2)
        return None


def kernel_available() -> bool:
    """Whether the C++ kernel is on and built (building it now if needed)."""
    return _enabled and _kernel() is not None


def cross_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """`softmax(q k^T) v` per row and head: `q [B, H, T, D]` already scaled, `k, v [B, H, L, D]`."""
    if _enabled and _fits_kernel(q, k, v) and (kernel := _kernel()) is not None:
        return kernel.cross_attention(q.contiguous(), k, v)
    return F.scaled_dot_product_attention(q, k, v, scale=1.0)


def _fits_kernel(q: Tensor, k: Tensor, v: Tensor) -> bool:
    tensors = (q, k, v)
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 4 for t in tensors)
        and q.shape[-1] == _HEAD_DIM
        and k.shape[2] > 0  # no frames: PyTorch's answer, whatever it is
        and k.is_contiguous()
        and v.is_contiguous()
        # No backward: training goes through PyTorch's attention.
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    )
