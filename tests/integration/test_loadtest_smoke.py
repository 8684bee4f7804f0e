"""A few seconds of the Locust load test against the session's tritonserver: it runs, and nothing fails.

Both user kinds (one clip per request, and two clips per request as concurrent calls) and both
decoding modes, on real clips; bounded by Locust's run time plus an outer `timeout`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtest" / "locustfile.py"
# Locust stops starting requests after RUN_S; in-flight ones get STOP_S to finish; then `timeout`.
RUN_S, STOP_S, HARD_LIMIT_S = 5, 240, 360


def test_locust_smoke_run_has_requests_and_no_errors(
    triton_url: str, speech_dir: Path, tmp_path: Path
) -> None:
    record = tmp_path / "requests.jsonl"
    command = [
        "timeout", "-k", "10", str(HARD_LIMIT_S),
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", triton_url, "-u", "2", "-r", "2", "--run-time", f"{RUN_S}s", "--stop-timeout", str(STOP_S),
        "--speech-dir", str(speech_dir), "--clip-limit", "6", "--decoding", "both",
        "--clips-per-request", "2", "--record-file", str(record),
        "ClipUser", "ClipBatchUser",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=HARD_LIMIT_S + 30)
    output = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert done.returncode != 124, f"the load test overran {HARD_LIMIT_S} s\n{output}"
    # Locust exits 1 when any request failed.
    assert done.returncode == 0, output

    records = [json.loads(line) for line in record.read_text().splitlines()]
    assert records, f"no request completed\n{output}"
    assert [r["error"] for r in records if not r["ok"]] == []
    # One user of each kind ran: single clips and pairs, speculative and plain.
    assert {r["clips"] for r in records} == {1, 2}
    assert {r["speculative"] for r in records} == {True, False}
    assert all(r["audio_s"] > 0 and r["latency_s"] > 0 for r in records)
