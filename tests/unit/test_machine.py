"""The CPU line of the benchmark reports (`scripts/machine.py`): the hosts change from run to run, and a
ratio measured on AVX2 must not read as one measured on AVX-512."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from machine import cpu_description

PROCESSOR = """processor\t: {n}
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: {model}
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx avx2 fma {extra}
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the vector extensions named are x86's")
@pytest.mark.parametrize(
    ("model", "extra", "expected"),
    [
        (17, "avx512f avx512bw avx512_vnni", "AMD EPYC (AuthenticAMD family 25 model 17), AVX-512"),
        (1, "", "AMD EPYC (AuthenticAMD family 25 model 1), AVX2"),
    ],
)
def test_the_report_names_the_cpu_generation_and_its_vector_width(
    tmp_path: Path, model: int, extra: str, expected: str
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("\n".join(PROCESSOR.format(n=n, model=model, extra=extra) for n in range(2)))
    assert cpu_description(cpuinfo) == expected


def test_without_cpuinfo_it_still_names_the_machine(tmp_path: Path) -> None:
    assert cpu_description(tmp_path / "missing")
