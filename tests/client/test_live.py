"""The client against a real tritonserver serving the `whisper` ensemble (docs/api.md).

Needs the session fixture `triton_url` (the gRPC host:port of a server whose `whisper` model is
ready), provided by tests/conftest.py. Without it these tests error rather than skip: a silent
skip would hide that the client was never checked against the real server.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import tritonclient.grpc as grpcclient
from spec_whisper_client import (
    AsyncWhisperClient,
    DeadlineExceeded,
    InvalidRequest,
    TranscriptionResult,
    UnknownLanguage,
    WhisperClient,
)
from spec_whisper_client.audio import PreparedAudio
from spec_whisper_client.cli import main
from spec_whisper_client.errors import from_triton
from spec_whisper_client.protocol import RequestOptions, build_inputs
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration

# Generous: the server may run on CPU, and the first requests may pay for warm-up.
TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def client(triton_url: str) -> Iterator[WhisperClient]:
    with WhisperClient(triton_url, timeout_s=TIMEOUT_S) as client:
        client.wait_until_ready(timeout_s=120)
        yield client


@pytest.fixture(scope="module")
def references(manifest: list[dict]) -> dict[str, dict]:
    """manifest.jsonl entries by path relative to speech_dir."""
    return {entry["path"]: entry for entry in manifest}


def words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def similarity(a: str, b: str) -> float:
    """Word-level match ratio in [0, 1]; 1 - similarity is roughly a word error rate."""
    return difflib.SequenceMatcher(None, words(a), words(b)).ratio()


def check_result(result: TranscriptionResult, duration_s: float) -> None:
    """Invariants every successful result must satisfy, whatever the audio."""
    assert result.text.strip()
    assert result.tokens and all(isinstance(token, int) for token in result.tokens)
    assert result.language
    assert 0 <= result.accepted <= result.drafted
    assert result.decoder_passes >= 1
    assert result.latency_s > 0
    assert result.windows and result.windows[0][0] == 0.0
    starts = [start for start, _ in result.windows]
    assert starts == sorted(starts)
    assert all(end > start for start, end in result.windows)
    assert result.windows[-1][1] >= duration_s - 0.5
    # Segments (subtitle cues) lie inside the audio, in order, and hold the transcript's words.
    assert result.segments and all(0 <= s.start < s.end <= duration_s + 0.5 for s in result.segments)
    assert [s.start for s in result.segments] == sorted(s.start for s in result.segments)
    # (A word cut at a seam would read as two, hence not exact equality.)
    joined = words(" ".join(s.text for s in result.segments))
    assert difflib.SequenceMatcher(None, joined, words(result.text)).ratio() > 0.95


def relative(path: Path, speech_dir: Path) -> str:
    return path.relative_to(speech_dir).as_posix()


def test_ready(client: WhisperClient, triton_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert client.is_ready()
    assert main(["health", "--url", triton_url]) == 0
    assert "whisper ready" in capsys.readouterr().out


def test_path_decoded_here(client: WhisperClient, flac_16k: Path, speech_dir: Path, references: dict) -> None:
    entry = references[relative(flac_16k, speech_dir)]
    result = client.transcribe(flac_16k)
    check_result(result, entry["duration_s"])
    assert result.language == "en"
    assert len(result.windows) == 1
    assert similarity(result.text, entry["text"]) > 0.7, result.text


def test_file_bytes_match_client_decoding_for_16k_flac(client: WhisperClient, flac_16k: Path) -> None:
    # Lossless and already 16 kHz mono: both routes must feed the model the same samples.
    here = client.transcribe(flac_16k)
    there = client.transcribe(flac_16k, send_file_bytes=True)
    assert there.tokens == here.tokens and there.text == here.text


def test_bytes_of_a_44k_mp3(client: WhisperClient, mp3_44k: Path, speech_dir: Path, references: dict) -> None:
    entry = references[relative(mp3_44k, speech_dir)]
    result = client.transcribe(mp3_44k.read_bytes())  # bytes default to AUDIO_FILE
    check_result(result, entry["duration_s"])
    assert result.language == "de"
    assert len(result.windows) >= 3  # 68 s


def test_stereo_44k_array(client: WhisperClient, flac_16k: Path) -> None:
    mono, _ = sf.read(flac_16k, dtype="float32")
    up = soxr.resample(mono, 16000, 44100)
    stereo = np.stack([up, 0.8 * up], axis=1)
    result = client.transcribe(stereo, sample_rate=44100)
    check_result(result, len(mono) / 16000)
    assert similarity(result.text, client.transcribe(flac_16k).text) > 0.8


def test_speculative_output_is_identical_to_plain_greedy(client: WhisperClient, ogg_opus: Path) -> None:
    fast = client.transcribe(ogg_opus, speculative=True)
    plain = client.transcribe(ogg_opus, speculative=False)
    assert fast.tokens == plain.tokens and fast.text == plain.text
    assert plain.drafted == 0 and plain.accepted == 0
    assert fast.decoder_passes <= plain.decoder_passes


def test_draft_length_changes_speed_not_output(client: WhisperClient, ogg_opus: Path) -> None:
    default = client.transcribe(ogg_opus)
    for draft_length in (1, 8):
        assert client.transcribe(ogg_opus, draft_length=draft_length).tokens == default.tokens


def test_language_task_and_token_limit(client: WhisperClient, ogg_opus: Path) -> None:
    forced = client.transcribe(ogg_opus, language="es")
    assert forced.language == "es"
    translated = client.transcribe(ogg_opus, language="es", task="translate")
    assert translated.text.strip() and translated.text != forced.text
    short = client.transcribe(ogg_opus, max_new_tokens=5)
    assert 0 < len(short.tokens) <= 5


def test_unknown_language(client: WhisperClient, flac_16k: Path) -> None:
    with pytest.raises(UnknownLanguage):
        client.transcribe(flac_16k, language="xx")


def raw_infer(triton_url: str, audio: PreparedAudio) -> InferenceServerException:
    """Send a request the client would have refused locally, straight through tritonclient."""
    with grpcclient.InferenceServerClient(triton_url) as raw:
        try:
            raw.infer("whisper", build_inputs(audio, RequestOptions()), client_timeout=TIMEOUT_S)
        except InferenceServerException as exc:
            return exc
    raise AssertionError("the server accepted a bad request")


def test_bad_files(client: WhisperClient, triton_url: str, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + bytes(1000))
    for path in (corrupt, tmp_path / "missing.flac"):
        with pytest.raises(InvalidRequest):
            client.transcribe(path)
        with pytest.raises(InvalidRequest):
            client.transcribe(path, send_file_bytes=True)
    # What the server itself does with bad audio (the client's local checks bypassed).
    for bad in (
        PreparedAudio(file_bytes=b"\x00garbage" * 100),
        PreparedAudio(samples=np.zeros(0, np.float32)),
    ):
        error = from_triton(raw_infer(triton_url, bad))
        assert isinstance(error, InvalidRequest) and error.message, error


def test_one_bad_request_does_not_fail_its_batch(
    client: WhisperClient, triton_url: str, speech_dir: Path
) -> None:
    goods = sorted((speech_dir / "librispeech_test_other/1688").glob("*.flac"))[:4]
    with ThreadPoolExecutor(8) as pool:
        good = [pool.submit(client.transcribe, path) for path in goods]
        bad = [
            pool.submit(raw_infer, triton_url, PreparedAudio(file_bytes=b"not audio" * 50)) for _ in range(2)
        ]
        for future in good:
            assert future.result().text.strip()
        for future in bad:
            assert isinstance(from_triton(future.result()), InvalidRequest)


def test_concurrency_with_mixed_lengths(
    client: WhisperClient, speech_dir: Path, mp3_44k: Path, tmp_path: Path, references: dict
) -> None:
    # 6 s to 68 s (one window to three) in flight together, plus a file that fails locally.
    shorts = sorted((speech_dir / "librispeech_test_other/1998").glob("*.flac"))[:3]
    fleurs = sorted((speech_dir / "fleurs/de").glob("*.ogg"))[:1]
    items: list = [shorts[0], mp3_44k.read_bytes(), *fleurs, tmp_path / "missing.flac", *shorts[1:]]
    results = client.transcribe_many(items, concurrency=8)
    assert len(results) == len(items)
    assert isinstance(results[3], InvalidRequest)
    assert isinstance(results[1], TranscriptionResult) and len(results[1].windows) >= 3
    for item, result in zip(items, results, strict=True):
        if not isinstance(item, Path) or item.name == "missing.flac":
            continue
        assert isinstance(result, TranscriptionResult), result
        entry = references[relative(item, speech_dir)]
        check_result(result, entry["duration_s"])
        # In order: each result belongs to its own item.
        assert similarity(result.text, entry["text"]) > 0.5, (item, result.text)
    # Batched with others or alone, a short clip reads the same.
    alone = client.transcribe(shorts[0])
    assert similarity(alone.text, results[0].text) > 0.9


def test_deadline_that_expires(triton_url: str, flac_16k: Path) -> None:
    with WhisperClient(triton_url, retries=0) as client:
        with pytest.raises(DeadlineExceeded):
            client.transcribe(flac_16k, timeout_s=0.05)
        # The abandoned request must not wedge the server.
        assert client.transcribe(flac_16k, timeout_s=TIMEOUT_S).text.strip()


@pytest.mark.parametrize("fmt", ["text", "json", "srt", "vtt"])
def test_cli_formats(triton_url: str, flac_16k: Path, speech_dir: Path, tmp_path: Path, fmt: str) -> None:
    other = speech_dir / "librispeech_test_other/1688/1688-142285-0008.flac"
    out = tmp_path / fmt
    argv = ["transcribe", "--url", triton_url, "--format", fmt, "--output", str(out)]
    assert main([*argv, str(flac_16k), str(other)]) == 0
    suffix = {"text": "txt"}.get(fmt, fmt)
    written = out / f"{flac_16k.stem}.{suffix}"
    content = written.read_text(encoding="utf-8")
    assert (out / f"{other.stem}.{suffix}").exists()
    if fmt == "json":
        assert json.loads(content)["language"] == "en"
    elif fmt == "srt":
        assert content.startswith("1\n00:00:00,000 --> 00:00:")
    elif fmt == "vtt":
        assert content.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:")
    else:
        assert content.strip()


def test_cli_exit_codes(
    triton_url: str, flac_16k: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["transcribe", "--url", triton_url, str(flac_16k), str(tmp_path / "missing.wav")]) == 1
    assert main(["transcribe", "--url", triton_url, "--language", "xx", str(flac_16k)]) == 1
    assert "language" in capsys.readouterr().err
    argv = ["transcribe", "--url", triton_url, "--timeout", "0.01", "--retries", "0", str(flac_16k)]
    assert main(argv) == 4
    assert main(["transcribe", "--url", triton_url, "--model", "no_such_model", str(flac_16k)]) == 3


def test_async_client_matches_sync(client: WhisperClient, triton_url: str, speech_dir: Path) -> None:
    paths = sorted((speech_dir / "librispeech_test_other/2033").glob("*.flac"))[:2]

    async def transcribe_all() -> list:
        async with AsyncWhisperClient(triton_url, timeout_s=TIMEOUT_S) as aclient:
            assert await aclient.is_ready()
            return await aclient.transcribe_many(paths, concurrency=2)

    results = asyncio.run(transcribe_all())
    for path, result in zip(paths, results, strict=True):
        assert isinstance(result, TranscriptionResult), result
        assert similarity(result.text, client.transcribe(path).text) > 0.9
