"""Exactness where this machine's own build does not run: the CPU kernels built for a CPU without
AVX-512 (`x86-64-v3`: the few-row products on AVX2, the attention kernels' portable loops, PyTorch's
encoder attention) and no
kernels at all. Speculative output must still equal greedy there, token for token, and greedy must
give this machine's native tokens, on real speech. Each build decodes in a fresh interpreter."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from spec_whisper.engine import SpeculativeWhisper
from spec_whisper.types import DecodingOptions

pytestmark = pytest.mark.slow

CHILD = Path(__file__).with_name("decode_clips.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chosen(clips: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Six held-out English clips and one of each FLEURS language."""
    english = [c for c in clips if c["language"] == "en"][40:46]
    others = {c["language"]: c for c in reversed(clips) if c["language"] != "en"}
    return english + sorted(others.values(), key=lambda c: c["language"])


@pytest.fixture(scope="module")
def native_greedy(whisper_base_dir: Path, chosen: list[dict[str, Any]]) -> list[list[int]]:
    engine = SpeculativeWhisper.load(whisper_base_dir)
    states = engine.encode_pcm([c["pcm"] for c in chosen])
    return [r.tokens for r in engine.decode(states, [DecodingOptions(speculative=False)] * len(chosen))]


def _decode_in(
    environment: dict[str, str],
    whisper_base_dir: Path,
    assistant_dir: Path,
    speech_dir: Path,
    chosen: list[dict[str, Any]],
) -> dict[str, Any]:
    """`decode_clips.py`'s report from a fresh interpreter with `environment` added to ours."""
    paths = [str(speech_dir / c["path"]) for c in chosen]
    env = {**os.environ, **environment, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(CHILD), str(whisper_base_dir), str(assistant_dir), *paths],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "build",
    [
        pytest.param({"SPEC_WHISPER_CPU_ARCH": "x86-64-v3"}, id="without-avx512"),
        pytest.param({"SPEC_WHISPER_CPU_KERNEL": "0"}, id="no-kernels"),
    ],
)
def test_speculative_equals_greedy_on_other_builds(
    build, whisper_base_dir, assistant_dir, speech_dir, chosen, native_greedy
) -> None:
    if "SPEC_WHISPER_CPU_ARCH" in build and platform.machine() != "x86_64":
        pytest.skip("an x86-64-v3 build needs an x86-64 CPU")
    report = _decode_in(build, whisper_base_dir, assistant_dir, speech_dir, chosen)
    if "SPEC_WHISPER_CPU_ARCH" in build:  # built: the products and the encoder's attention on AVX2
        assert report["kernels"] and report["few_rows_products"] and report["encoder_kernel"]
    else:
        assert not report["kernels"]
    tokens = report["tokens"]
    for name, decoded in tokens.items():
        assert decoded == native_greedy, f"{name}: differs from the native build's greedy tokens"
    assert all(report["drafted"][name] > 0 for name in tokens if "drafts" in name)
