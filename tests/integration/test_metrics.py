"""The decoder's speculative-decoding counters, and the time it waited for its turn on the cores,
reach Triton's metrics port."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from triton_helpers import transcribe

pytestmark = pytest.mark.integration

COUNTERS = (
    "spec_whisper_drafted_tokens_total",
    "spec_whisper_accepted_tokens_total",
    "spec_whisper_main_decoder_passes_total",
    "spec_whisper_windows_total",
)


def _metrics(server: Any) -> dict[str, float]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = re.findall(r'^(spec_whisper_\w+)\{[^}]*model="whisper_decoder"[^}]*\} (\S+)$', text, re.MULTILINE)
    return {name: float(value) for name, value in found}


def test_custom_metrics(triton_server: Any, triton_url: str, speech_dir: Path) -> None:
    before = _metrics(triton_server)
    clip = speech_dir / "librispeech_test_other/1688/1688-142285-0002.flac"
    # A fixed draft length: the counters are under test here, not the cost model's choice to draft.
    result = transcribe(triton_url, audio_file=clip.read_bytes(), speculative=True, draft_length=3)
    after = _metrics(triton_server)

    drafted, accepted, passes = result.stats
    assert drafted > 0
    deltas = {name: after[name] - before.get(name, 0.0) for name in COUNTERS}
    assert deltas == {
        "spec_whisper_drafted_tokens_total": drafted,
        "spec_whisper_accepted_tokens_total": accepted,
        "spec_whisper_main_decoder_passes_total": passes,
        "spec_whisper_windows_total": 1,
    }
    assert 0.0 <= after["spec_whisper_acceptance_rate"] <= 1.0
    # The test server runs on CPU, where the stages take turns; a lone request may wait for none.
    wait = "spec_whisper_decoder_turn_wait_seconds_total"
    assert 0.0 <= before.get(wait, 0.0) <= after[wait] < 600
