"""The spec-whisper command: output formats and exit codes, against the scripted fake server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from fake_triton import FakeServer, Outputs, fail, ok, slow
from spec_whisper_client import ClientError, DeadlineExceeded, InvalidRequest, ServerUnavailable
from spec_whisper_client.cli import _exit_code, main

TWO_WINDOWS = Outputs(
    text=" Hello there, general.",
    windows=((0.0, 30.0), (20.0, 41.5)),
    segments=((0.0, 25.0, " Hello there,"), (25.0, 41.5, " general.")),
)


@pytest.fixture
def wavs(tmp_path: Path) -> list[str]:
    """Two small WAV files (0.5 s and 1 s of a quiet tone) in their own folder."""
    folder = tmp_path / "audio"
    folder.mkdir()
    paths = []
    for name, seconds in (("one.wav", 0.5), ("two.wav", 1.0)):
        t = np.arange(int(16000 * seconds)) / 16000
        sf.write(folder / name, 0.1 * np.sin(2 * np.pi * 440 * t), 16000)
        paths.append(str(folder / name))
    return paths


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run `spec-whisper ARGS...` in-process; returns (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse usage errors and --help
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_text_for_one_file(fake: FakeServer, wavs: list[str], cli: Cli) -> None:
    code, out, _ = cli("transcribe", "--url", fake.url, wavs[0])
    assert (code, out) == (0, "hello world\n")


def test_text_for_several_files_is_tab_separated(fake: FakeServer, wavs: list[str], cli: Cli) -> None:
    code, out, _ = cli("transcribe", "--url", fake.url, *wavs)
    assert code == 0
    assert out.splitlines() == [f"{wavs[0]}\thello world", f"{wavs[1]}\thello world"]


def test_json_lines(fake: FakeServer, wavs: list[str], cli: Cli) -> None:
    fake.servicer.default = ok(TWO_WINDOWS)
    code, out, _ = cli("transcribe", "--url", fake.url, "--format", "json", *wavs)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [record["file"] for record in records] == wavs
    assert records[0]["text"] == " Hello there, general."
    assert records[0]["windows"] == [[0.0, 30.0], [20.0, 41.5]]
    assert records[0]["segments"][1] == {"start": 25.0, "end": 41.5, "text": " general."}
    assert records[0]["acceptance_rate"] == pytest.approx(0.8)
    assert {"tokens", "language", "latency_s", "drafted", "accepted", "decoder_passes"} <= set(records[0])


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (
            "srt",
            "1\n00:00:00,000 --> 00:00:25,000\nHello there,\n\n2\n00:00:25,000 --> 00:00:41,500\ngeneral.\n",
        ),
        (
            "vtt",
            "WEBVTT\n\n00:00:00.000 --> 00:00:25.000\nHello there,\n\n"
            "00:00:25.000 --> 00:00:41.500\ngeneral.\n",
        ),
        ("text", "Hello there, general.\n"),
    ],
)
def test_output_dir_gets_one_file_per_input(
    fake: FakeServer, wavs: list[str], tmp_path: Path, cli: Cli, fmt: str, expected: str
) -> None:
    fake.servicer.default = ok(TWO_WINDOWS)
    out_dir = tmp_path / "out" / "nested"
    code, out, _ = cli("transcribe", "--url", fake.url, "--format", fmt, "--output", str(out_dir), *wavs)
    assert (code, out) == (0, "")
    suffix = {"text": "txt"}.get(fmt, fmt)
    assert sorted(p.name for p in out_dir.iterdir()) == [f"one.{suffix}", f"two.{suffix}"]
    assert (out_dir / f"one.{suffix}").read_text(encoding="utf-8") == expected


def test_options_reach_the_server(fake: FakeServer, wavs: list[str], cli: Cli) -> None:
    argv = ["transcribe", "--url", fake.url, "--language", "de", "--task", "translate", "--no-speculative"]
    argv += [
        "--draft-length",
        "4",
        "--max-new-tokens",
        "50",
        "--send-file-bytes",
        "--header",
        "X-Team=asr",
        wavs[0],
    ]
    code, _, _ = cli(*argv)
    assert code == 0
    sent = fake.servicer.requests[0]
    assert sent["AUDIO_FILE"].item() == Path(wavs[0]).read_bytes()
    assert sent["LANGUAGE"].item() == b"de" and sent["TASK"].item() == b"translate"
    assert sent["SPECULATIVE"].item() is False
    assert sent["DRAFT_LENGTH"].item() == 4 and sent["MAX_NEW_TOKENS"].item() == 50
    assert fake.servicer.metadata[0]["x-team"] == "asr"


@pytest.mark.parametrize(
    "extra",
    [
        ["--format", "srt"],  # several subtitle files but nowhere to put them
        ["--concurrency", "0"],
        ["--timeout", "-1"],
        ["--timeout", "nan"],
        ["--draft-length", "many"],
        ["--header", "no-equals-sign"],
        ["--task", "summarize"],
        ["--root-certificates", "/nonexistent/ca.pem"],
    ],
)
def test_usage_errors_exit_2(fake: FakeServer, wavs: list[str], cli: Cli, extra: list[str]) -> None:
    code, _, err = cli("transcribe", "--url", fake.url, *extra, *wavs)
    assert code == 2 and "error" in err
    assert fake.servicer.infer_calls == 0


def test_output_name_collision_exits_2(fake: FakeServer, wavs: list[str], tmp_path: Path, cli: Cli) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    twin = other / Path(wavs[0]).name
    twin.write_bytes(Path(wavs[0]).read_bytes())
    code, _, err = cli("transcribe", "--url", fake.url, "--output", str(tmp_path / "o"), wavs[0], str(twin))
    assert code == 2 and "both be written" in err


def test_a_failed_file_exits_1_and_the_rest_are_written(
    fake: FakeServer, wavs: list[str], tmp_path: Path, cli: Cli
) -> None:
    missing = str(tmp_path / "missing.wav")
    code, out, err = cli("transcribe", "--url", fake.url, "--format", "json", wavs[0], missing)
    assert code == 1
    good, bad = (json.loads(line) for line in out.splitlines())
    assert good["text"] == "hello world"
    assert bad["file"] == missing and bad["error_type"] == "InvalidRequest" and "no such file" in bad["error"]
    assert f"{missing}: " in err


def test_server_side_invalid_argument_exits_1(fake: FakeServer, wavs: list[str], cli: Cli) -> None:
    fake.servicer.play(fail(grpc.StatusCode.INVALID_ARGUMENT, "unknown language 'xx'"))
    code, _, err = cli("transcribe", "--url", fake.url, "--language", "xx", wavs[0])
    assert code == 1 and "unknown language 'xx'" in err


def test_server_down_exits_3(free_port: int, wavs: list[str], cli: Cli) -> None:
    code, out, err = cli("transcribe", "--url", f"127.0.0.1:{free_port}", *wavs)
    assert (code, out) == (3, "")
    assert "UNAVAILABLE" in err


def test_model_not_ready_exits_3(fake: FakeServer, wavs: list[str], cli: Cli) -> None:
    fake.servicer.model_ready = False
    code, _, err = cli("transcribe", "--url", fake.url, *wavs)
    assert code == 3 and "not ready" in err
    assert fake.servicer.infer_calls == 0


def test_server_lost_mid_run_exits_3(fake: FakeServer, wavs: list[str], cli: Cli) -> None:
    fake.servicer.default = fail(grpc.StatusCode.UNAVAILABLE, "shutting down")
    code, _, err = cli("transcribe", "--url", fake.url, "--retries", "1", *wavs)
    assert code == 3 and "shutting down" in err


def test_deadline_exits_4(fake: FakeServer, wavs: list[str], cli: Cli) -> None:
    fake.servicer.default = slow(1.0)
    code, _, err = cli("transcribe", "--url", fake.url, "--timeout", "0.2", "--retries", "0", wavs[0])
    assert code == 4 and "DEADLINE_EXCEEDED" in err


def test_exit_code_precedence() -> None:
    bad = InvalidRequest("bad audio")
    late = DeadlineExceeded("late", "DEADLINE_EXCEEDED")
    down = ServerUnavailable("down", "UNAVAILABLE")
    assert _exit_code([]) == 0
    assert _exit_code([bad, ClientError("internal", "INTERNAL")]) == 1
    assert _exit_code([bad, late]) == 4
    assert _exit_code([late, down, bad]) == 3


def test_health_command(fake: FakeServer, free_port: int, cli: Cli) -> None:
    code, out, _ = cli("health", "--url", fake.url)
    assert code == 0 and "model    whisper ready" in out
    code, out, _ = cli("health", "--url", fake.url, "--model", "other")
    assert code == 3 and "other not ready" in out
    code, out, err = cli("health", "--url", f"127.0.0.1:{free_port}", "--timeout", "2")
    assert code == 3 and "live     no" in out and err


def test_help_documents_exit_codes_and_subtitle_cues(cli: Cli) -> None:
    code, out, _ = cli("transcribe", "--help")
    assert code == 0
    for needle in ("exit codes:", "3  the server is unreachable", "One cue per segment", "examples:"):
        assert needle in out
    code, out, _ = cli("--help")
    assert code == 0 and "spec-whisper health" in out
    code, _, err = cli()
    assert code == 2 and "COMMAND" in err
