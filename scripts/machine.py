"""Which CPU a benchmark ran on, for its report: the hosts these runs land on change from day to day
(AMD Zen 3 with AVX2 one day, Zen 4 with AVX-512 the next), and the decoder's kernels, and with them
every ratio, depend on the vector width."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """E.g. "AMD EPYC (AuthenticAMD family 25 model 17), AVX-512": the model name, the family and model
    numbers that tell one generation from the next where a VM calls every CPU the same, and the widest
    vector extension."""
    if not cpuinfo.exists():
        return platform.processor() or platform.machine()
    first = cpuinfo.read_text().split("\n\n")[0]
    fields = {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in first.splitlines())
        if value
    }
    flags = set(fields.get("flags", "").split())
    vectors = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    name = fields.get("model name", platform.machine())
    if "cpu family" in fields:
        vendor, model = fields.get("vendor_id", ""), fields.get("model", "?")
        name += f" ({vendor} family {fields['cpu family']} model {model})"
    return f"{name}, {vectors}" if platform.machine() in ("x86_64", "AMD64") else name
