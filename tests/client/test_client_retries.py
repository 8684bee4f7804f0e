"""How both clients react to server errors, stalls and outages, against the scripted fake."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from fake_triton import FakeServer, FakeTriton, Outputs, fail, ok, slow
from spec_whisper_client import (
    AsyncWhisperClient,
    ClientError,
    DeadlineExceeded,
    InvalidRequest,
    ServerUnavailable,
    TranscriptionResult,
    UnknownLanguage,
    WhisperClient,
)

# One second of silence: enough for the request to be well formed, and no file to read.
SILENCE = (np.zeros(16000, dtype=np.float32), 16000)
# Short backoff so retry tests take milliseconds; the policy itself is tested in test_client_errors.
FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05}


def test_unavailable_is_retried_on_a_new_channel_until_it_succeeds(fake: FakeServer) -> None:
    fake.servicer.play(fail(grpc.StatusCode.UNAVAILABLE, "busy"), fail(grpc.StatusCode.UNAVAILABLE, "busy"))
    with WhisperClient(fake.url, retries=3, **FAST) as client:
        result = client.transcribe(SILENCE)
        assert result.text == "hello world"
        assert fake.servicer.infer_calls == 3
        assert client._slots.connects == 3  # a fresh channel after each UNAVAILABLE


def test_invalid_argument_is_raised_at_once_with_the_servers_message(fake: FakeServer) -> None:
    fake.servicer.play(fail(grpc.StatusCode.INVALID_ARGUMENT, "AUDIO must be 1-D"))
    with WhisperClient(fake.url, retries=3, **FAST) as client, pytest.raises(InvalidRequest) as caught:
        client.transcribe(SILENCE)
    assert caught.value.message == "AUDIO must be 1-D"
    assert caught.value.status == "INVALID_ARGUMENT"
    assert fake.servicer.infer_calls == 1


def test_unknown_language(fake: FakeServer) -> None:
    fake.servicer.play(fail(grpc.StatusCode.INVALID_ARGUMENT, "unknown language 'xx'"))
    with WhisperClient(fake.url, **FAST) as client, pytest.raises(UnknownLanguage, match="xx"):
        client.transcribe(SILENCE, language="xx")
    assert fake.servicer.requests[0]["LANGUAGE"].item() == b"xx"
    assert fake.servicer.infer_calls == 1


@pytest.mark.parametrize(
    ("code", "expected"),
    [(grpc.StatusCode.NOT_FOUND, ServerUnavailable), (grpc.StatusCode.INTERNAL, ClientError)],
)
def test_permanent_server_errors_are_not_retried(
    fake: FakeServer, code: grpc.StatusCode, expected: type[ClientError]
) -> None:
    fake.servicer.play(fail(code, "no"))
    with WhisperClient(fake.url, **FAST) as client, pytest.raises(expected):
        client.transcribe(SILENCE)
    assert fake.servicer.infer_calls == 1


def test_server_down_gives_up_after_bounded_retries(free_port: int) -> None:
    start = time.monotonic()
    with WhisperClient(f"127.0.0.1:{free_port}", retries=2, **FAST) as client:
        with pytest.raises(ServerUnavailable) as caught:
            client.transcribe(SILENCE)
        assert client._slots.connects == 3  # first try plus two retries, each on a new channel
    assert caught.value.status == "UNAVAILABLE"
    assert time.monotonic() - start < 5.0


def test_deadline_exceeded_on_a_stalled_server(fake: FakeServer) -> None:
    fake.servicer.default = slow(1.5)
    start = time.monotonic()
    with WhisperClient(fake.url, retries=0) as client, pytest.raises(DeadlineExceeded):
        client.transcribe(SILENCE, timeout_s=0.2)
    assert time.monotonic() - start < 1.2


def test_deadline_is_retried_because_inference_is_idempotent(fake: FakeServer) -> None:
    fake.servicer.play(slow(1.0))  # only the first attempt stalls
    with WhisperClient(fake.url, retries=1, timeout_s=0.3, **FAST) as client:
        assert client.transcribe(SILENCE).text == "hello world"
    assert fake.servicer.infer_calls == 2


def test_deadline_retry_can_be_disabled(fake: FakeServer) -> None:
    fake.servicer.play(slow(1.0))
    client = WhisperClient(fake.url, retries=3, timeout_s=0.2, retry_on_deadline=False, **FAST)
    with client, pytest.raises(DeadlineExceeded):
        client.transcribe(SILENCE)
    assert fake.servicer.infer_calls == 1


def test_bad_local_audio_never_reaches_the_server(fake: FakeServer, tmp_path: Path) -> None:
    with WhisperClient(fake.url) as client:
        with pytest.raises(InvalidRequest, match="no such file"):
            client.transcribe(tmp_path / "missing.wav")
        with pytest.raises(InvalidRequest, match="task"):
            client.transcribe(SILENCE, task="summarize")
    assert fake.servicer.infer_calls == 0


def test_headers_reach_the_server(fake: FakeServer) -> None:
    with WhisperClient(fake.url, headers={"authorization": "Bearer t0ken"}) as client:
        client.transcribe(SILENCE)
    assert fake.servicer.metadata[0]["authorization"] == "Bearer t0ken"


def test_ssl_is_passed_to_the_channel(fake: FakeServer) -> None:
    # The fake speaks plaintext, so a TLS handshake must fail: proof the client tried TLS.
    with WhisperClient(fake.url, ssl=True, retries=0) as client, pytest.raises(ServerUnavailable):
        client.transcribe(SILENCE, timeout_s=5)
    assert fake.servicer.infer_calls == 0


def test_missing_tls_files_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="root_certificates"):
        WhisperClient("localhost:1", ssl=True, root_certificates=str(tmp_path / "ca.pem"))


def test_closed_client_refuses_calls(fake: FakeServer) -> None:
    client = WhisperClient(fake.url)
    client.close()
    with pytest.raises(ClientError, match="closed"):
        client.transcribe(SILENCE)


def test_result_fields_come_from_the_outputs(fake: FakeServer) -> None:
    outputs = Outputs(
        text=" hej", tokens=(5, 6), language="sv", stats=(12, 9, 4), windows=((0, 30), (30, 41.5))
    )
    fake.servicer.default = ok(outputs)
    with WhisperClient(fake.url) as client:
        result = client.transcribe(SILENCE)
    assert result.text == " hej"
    assert result.tokens == (5, 6)
    assert result.language == "sv"
    assert (result.drafted, result.accepted, result.decoder_passes) == (12, 9, 4)
    assert result.acceptance_rate == pytest.approx(0.75)
    assert result.windows == ((0.0, 30.0), (30.0, 41.5))
    assert result.latency_s > 0


def echo_length(seconds: float = 0.0):
    """Answer with the number of samples received, so each result can be matched to its input."""

    def step(request, context):
        time.sleep(seconds)
        samples = request.inputs[0].shape[-1]
        if samples == 4242:  # a sentinel length the server "rejects"
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audio too strange")
        return Outputs(text=str(samples)).response(request)

    return step


def batch_items(tmp_path: Path) -> tuple[list, list]:
    lengths = [16000, 8000, 4242, 24000, 12000, 20000, 10000]
    items: list = [(np.zeros(n, dtype=np.float32), 16000) for n in lengths]
    items.insert(3, tmp_path / "missing.flac")
    expected = [str(n) if n != 4242 else InvalidRequest for n in lengths]
    expected.insert(3, InvalidRequest)
    return items, expected


def check_batch(results: list, expected: list) -> None:
    assert len(results) == len(expected)
    for result, want in zip(results, expected, strict=True):
        if want is InvalidRequest:
            assert isinstance(result, InvalidRequest)
        else:
            assert isinstance(result, TranscriptionResult) and result.text == want


def test_transcribe_many_keeps_order_bounds_concurrency_and_isolates_errors(
    fake: FakeServer, tmp_path: Path
) -> None:
    fake.servicer.default = echo_length(0.2)
    items, expected = batch_items(tmp_path)
    with WhisperClient(fake.url) as client:
        results = client.transcribe_many(items, concurrency=3)
    check_batch(results, expected)
    assert 1 < fake.servicer.max_in_flight <= 3


def test_transcribe_many_rejects_bad_options_up_front(fake: FakeServer) -> None:
    with WhisperClient(fake.url) as client:
        with pytest.raises(TypeError, match="langauge"):
            client.transcribe_many([SILENCE], langauge="en")
        with pytest.raises(InvalidRequest, match="task"):
            client.transcribe_many([SILENCE], task="summarize")
        with pytest.raises(ValueError, match="concurrency"):
            client.transcribe_many([SILENCE], concurrency=0)
    assert fake.servicer.infer_calls == 0


def test_health(fake: FakeServer, free_port: int) -> None:
    with WhisperClient(fake.url) as client:
        assert client.is_ready()
        fake.servicer.model_ready = False
        status = client.health()
        assert (status.server_live, status.server_ready, status.model_ready) == (True, True, False)
        assert "whisper" in status.error
    with WhisperClient(fake.url, model="other") as client:
        assert not client.is_ready()
    with WhisperClient(f"127.0.0.1:{free_port}") as client:
        status = client.health()
        assert not status.ok and "UNAVAILABLE" in status.error
        with pytest.raises(ServerUnavailable, match="not ready after"):
            client.wait_until_ready(timeout_s=0.3, poll_s=0.1)


def test_server_that_comes_back_is_reached_by_retries(free_port: int) -> None:
    # Down for the first attempts, up while the client backs off (1.5 to 3.5 s of backoff in all).
    server = FakeServer(FakeTriton(), port=free_port)
    timer = threading.Timer(0.3, server.__enter__)
    timer.start()
    try:
        with WhisperClient(f"127.0.0.1:{free_port}", retries=10, backoff_s=0.1, max_backoff_s=0.4) as client:
            assert client.transcribe(SILENCE).text == "hello world"
    finally:
        timer.join()
        server.stop()
    assert server.servicer.infer_calls == 1


# --- asyncio client: same behaviour, same fake --------------------------------------------------


def test_async_unavailable_then_success(fake: FakeServer) -> None:
    fake.servicer.play(fail(grpc.StatusCode.UNAVAILABLE, "busy"), fail(grpc.StatusCode.UNAVAILABLE, "busy"))

    async def scenario() -> TranscriptionResult:
        async with AsyncWhisperClient(fake.url, retries=3, **FAST) as client:
            return await client.transcribe(SILENCE)

    assert asyncio.run(scenario()).text == "hello world"
    assert fake.servicer.infer_calls == 3


def test_async_errors(fake: FakeServer, free_port: int) -> None:
    fake.servicer.play(fail(grpc.StatusCode.INVALID_ARGUMENT, "unknown language 'xx'"), slow(1.5))

    async def scenario() -> None:
        async with AsyncWhisperClient(fake.url, retries=2, **FAST) as client:
            with pytest.raises(UnknownLanguage):
                await client.transcribe(SILENCE, language="xx")
        async with AsyncWhisperClient(fake.url, retries=0) as client:
            with pytest.raises(DeadlineExceeded):
                await client.transcribe(SILENCE, timeout_s=0.2)
        async with AsyncWhisperClient(f"127.0.0.1:{free_port}", retries=1, **FAST) as client:
            with pytest.raises(ServerUnavailable):
                await client.transcribe(SILENCE)
            assert not await client.is_ready()

    asyncio.run(scenario())


def test_async_transcribe_many(fake: FakeServer, tmp_path: Path) -> None:
    fake.servicer.default = echo_length(0.2)
    items, expected = batch_items(tmp_path)

    async def scenario() -> list:
        async with AsyncWhisperClient(fake.url) as client:
            assert await client.is_ready()
            return await client.transcribe_many(items, concurrency=3)

    check_batch(asyncio.run(scenario()), expected)
    assert 1 < fake.servicer.max_in_flight <= 3


def test_sync_and_async_transcribe_take_the_same_options() -> None:
    import inspect

    sync = inspect.signature(WhisperClient.transcribe).parameters
    aio = inspect.signature(AsyncWhisperClient.transcribe).parameters
    assert [(p.name, p.kind, p.default) for p in sync.values()] == [
        (p.name, p.kind, p.default) for p in aio.values()
    ]
