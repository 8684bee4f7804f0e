"""A few seconds of the Locust load test against the session's tritonserver: it runs, and nothing fails.

Both user kinds (one clip per request, and two clips per request as concurrent calls) and both
decoding modes, on real clips; bounded by Locust's run time plus an outer `timeout`. The same for the
decoder step alone (`--stage decoder`), whose saved inputs must give the ensemble's transcripts, and
for `whisper_long` (`--model whisper_long`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from spec_whisper_client import WhisperClient
from triton_helpers import served_counts

pytestmark = pytest.mark.integration

LOADTEST = Path(__file__).resolve().parents[2] / "loadtest"
LOCUSTFILE = LOADTEST / "locustfile.py"
sys.path.insert(0, str(LOADTEST))
from clips import load_clips  # noqa: E402
from decoder_stage import (  # noqa: E402
    DecoderStageClient,
    SharedDecoderInputs,
    compute_decoder_inputs,
    load_decoder_inputs,
)

# Locust stops starting requests after RUN_S; in-flight ones get STOP_S to finish; then `timeout`.
RUN_S, STOP_S, HARD_LIMIT_S = 5, 240, 360


def _run_locust(triton_url: str, speech_dir: Path, record: Path, *extra: str) -> list[dict]:
    command = [
        "timeout", "-k", "10", str(HARD_LIMIT_S),
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", triton_url, "-u", "2", "-r", "2", "--run-time", f"{RUN_S}s", "--stop-timeout", str(STOP_S),
        "--speech-dir", str(speech_dir), "--clip-limit", "6", "--decoding", "both",
        "--clips-per-request", "2", "--record-file", str(record), *extra,
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
    return records


def test_locust_smoke_run_has_requests_and_no_errors(
    triton_url: str, speech_dir: Path, tmp_path: Path
) -> None:
    records = _run_locust(triton_url, speech_dir, tmp_path / "requests.jsonl")
    # One user of each kind ran: single clips and pairs, speculative and plain.
    assert {r["clips"] for r in records} == {1, 2}
    assert {r["speculative"] for r in records} == {True, False}
    assert all(r["audio_s"] > 0 and r["latency_s"] > 0 for r in records)


def test_locust_smoke_run_against_whisper_long(triton_url: str, speech_dir: Path, tmp_path: Path) -> None:
    before, _ = served_counts(triton_url, "whisper_long")
    records = _run_locust(triton_url, speech_dir, tmp_path / "requests.jsonl", "--model", "whisper_long")
    assert {r["clips"] for r in records} == {1, 2}
    assert served_counts(triton_url, "whisper_long")[0] - before >= sum(r["clips"] for r in records)


def test_decoder_stage_gives_the_ensembles_transcripts_and_loads_without_errors(
    triton_url: str, speech_dir: Path, tmp_path: Path
) -> None:
    clips = load_clips(speech_dir, "librispeech", limit=2)
    saved = load_decoder_inputs(compute_decoder_inputs(triton_url, clips, tmp_path / "inputs.npz"))
    assert set(saved) == {clip.id for clip in clips}
    shared = SharedDecoderInputs(triton_url, saved)
    decoder = DecoderStageClient(triton_url, shared)
    try:
        with WhisperClient(triton_url) as whole:
            for clip in clips:
                for speculative in (False, True):
                    alone = decoder.decode(clip.id, speculative)
                    expected = whole.transcribe(
                        (clip.pcm, 16000), language=clip.language, speculative=speculative
                    )
                    assert alone.text == expected.text, (clip.id, speculative)
                    assert speculative or alone.drafted == 0
    finally:
        decoder.close()
        shared.close()
    assert not list(Path("/dev/shm").glob(f"{shared.name}*")), "the shared-memory region outlived close()"

    inputs = tmp_path / "all.npz"
    compute_decoder_inputs(triton_url, load_clips(speech_dir, "librispeech", limit=6), inputs)
    records = _run_locust(
        triton_url,
        speech_dir,
        tmp_path / "requests.jsonl",
        "--stage",
        "decoder",
        "--decoder-inputs",
        str(inputs),
    )
    assert {r["clips"] for r in records} == {1, 2}
    assert {r["speculative"] for r in records} == {True, False}
