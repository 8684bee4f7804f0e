"""The C++ kernels for CPUs, built once on the machine that runs them.

`csrc/` holds the decoder's and the encoder's attention (`cpu_attention.py`), the decoder's
few-row products (`linear.FewRowsLinear`) and a decoder layer's pass in one call (`decoder.py`).
They are compiled on first use with `-march=native` (about 90 s; `torch.utils.cpp_extension` caches
the build), or for the target that SPEC_WHISPER_CPU_ARCH names (`x86-64-v3`: AVX2 without AVX-512,
where the products and the encoder's attention run 8 lanes wide and the decoder's attention takes its
portable loops). Without a C++ compiler, or
with SPEC_WHISPER_CPU_KERNEL=0, everything runs on PyTorch's own operators: correct, only slower.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from pathlib import Path
from types import ModuleType

__all__ = ["kernels", "kernels_available", "target_arch", "use_kernels"]

_SOURCES = [
    Path(__file__).resolve().parent / "csrc" / name
    for name in (
        "module.cpp",
        "decoder_attention.cpp",
        "decoder_layer.cpp",
        "encoder_attention.cpp",
        "few_rows_linear.cpp",
        "screened_argmax.cpp",
    )
]

_enabled = os.environ.get("SPEC_WHISPER_CPU_KERNEL", "1") != "0"


def use_kernels(enabled: bool) -> None:
    """Switch the kernels on or off for this process (benchmarks compare both in one run). Products
    choose when their weights are packed, attention at every call."""
    global _enabled
    _enabled = enabled


def target_arch() -> str:
    """The `-march` the kernels are built for: this machine's own unless SPEC_WHISPER_CPU_ARCH says."""
    return os.environ.get("SPEC_WHISPER_CPU_ARCH", "native")


def kernels() -> ModuleType | None:
    """The built module when the kernels are on, else None."""
    return _build() if _enabled else None


def kernels_available() -> bool:
    """Whether the kernels are on and built (building them now if needed)."""
    return kernels() is not None


@functools.cache
def _build() -> ModuleType | None:
    from torch.utils.cpp_extension import load  # imports setuptools: only when the kernels are wanted

    try:
        import ninja  # the PyPI build tool: put it on PATH, where the build looks (venvs are not)

        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
    except ImportError:
        pass
    arch = target_arch()
    # One build per target, so that switching targets never loads another target's cached build.
    suffix = "" if arch == "native" else "_" + re.sub(r"\W", "_", arch)
    try:
        return load(
            name=f"spec_whisper_cpu_kernels{suffix}",
            sources=[str(path) for path in _SOURCES],
            # Fast math vectorises exp(); infinities stay defined.
            extra_cflags=["-O3", f"-march={arch}", "-fopenmp", "-ffast-math", "-fno-finite-math-only"],
            verbose=False,
        )
    except Exception as error:  # no compiler or no ninja: correct, only slower
        warnings.warn(f"CPU kernels unavailable, using PyTorch's operators: {error}", stacklevel=2)
        return None
