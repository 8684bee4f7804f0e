"""Error mapping, retry policy and channel bookkeeping, without any server."""

from __future__ import annotations

import pickle

import pytest
from spec_whisper_client import (
    ClientError,
    DeadlineExceeded,
    InvalidRequest,
    ServerUnavailable,
    UnknownLanguage,
)
from spec_whisper_client.errors import from_triton
from spec_whisper_client.retry import ClientSlots, RetryPolicy
from tritonclient.utils import InferenceServerException


def triton_error(status: str | None, message: str = "boom") -> InferenceServerException:
    return InferenceServerException(msg=message, status=status, debug_details="debug")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("StatusCode.INVALID_ARGUMENT", InvalidRequest),
        ("StatusCode.UNAVAILABLE", ServerUnavailable),
        ("StatusCode.NOT_FOUND", ServerUnavailable),
        ("StatusCode.DEADLINE_EXCEEDED", DeadlineExceeded),
        ("StatusCode.INTERNAL", ClientError),
        ("StatusCode.CANCELLED", ClientError),
        (None, ClientError),
    ],
)
def test_status_maps_to_error_class(status: str | None, expected: type[ClientError]) -> None:
    error = from_triton(triton_error(status, "the server said why"))
    assert type(error) is expected
    assert error.message == "the server said why"
    assert error.status == (status.split(".")[-1] if status else None)
    assert error.debug_details == "debug"


@pytest.mark.parametrize(
    "message",
    ["unknown language 'xx'", "Language 'klingon' is not supported", "unsupported LANGUAGE: zz"],
)
def test_unknown_language_is_an_invalid_request(message: str) -> None:
    error = from_triton(triton_error("StatusCode.INVALID_ARGUMENT", message))
    assert isinstance(error, UnknownLanguage)
    assert isinstance(error, InvalidRequest)


def test_other_invalid_arguments_are_not_language_errors() -> None:
    error = from_triton(triton_error("StatusCode.INVALID_ARGUMENT", "AUDIO is empty"))
    assert type(error) is InvalidRequest


def test_errors_are_also_the_matching_builtin_exceptions() -> None:
    # Callers that know nothing of this package can still catch them sensibly.
    assert issubclass(InvalidRequest, ValueError)
    assert issubclass(ServerUnavailable, ConnectionError)
    assert issubclass(DeadlineExceeded, TimeoutError)


def test_errors_survive_pickling() -> None:
    error = pickle.loads(pickle.dumps(UnknownLanguage("unknown language 'xx'", "INVALID_ARGUMENT")))
    assert type(error) is UnknownLanguage
    assert error.status == "INVALID_ARGUMENT"
    assert str(error) == "[INVALID_ARGUMENT] unknown language 'xx'"


def test_retry_only_transient_errors() -> None:
    policy = RetryPolicy(retries=2)
    unavailable = ServerUnavailable("down", "UNAVAILABLE")
    assert policy.should_retry(unavailable, 0)
    assert policy.should_retry(unavailable, 1)
    assert not policy.should_retry(unavailable, 2)
    assert policy.should_retry(DeadlineExceeded("slow", "DEADLINE_EXCEEDED"), 0)
    assert not policy.should_retry(InvalidRequest("bad", "INVALID_ARGUMENT"), 0)
    assert not policy.should_retry(ServerUnavailable("no such model", "NOT_FOUND"), 0)
    assert not policy.should_retry(ClientError("bug", "INTERNAL"), 0)
    assert not policy.should_retry(InvalidRequest("missing file"), 0)


def test_deadline_retry_can_be_turned_off() -> None:
    policy = RetryPolicy(retry_on_deadline=False)
    assert not policy.should_retry(DeadlineExceeded("slow", "DEADLINE_EXCEEDED"), 0)
    assert policy.should_retry(ServerUnavailable("down", "UNAVAILABLE"), 0)


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(backoff_s=0.1, max_backoff_s=0.5)
    for retries_done, ceiling in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.5), (10, 0.5)]:
        delays = [policy.delay_s(retries_done) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)


def test_retry_policy_rejects_negative_settings() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_s=-0.1)


class Channel:
    def __init__(self, number: int) -> None:
        self.number = number


def test_slots_keep_a_retired_channel_until_its_last_call_returns() -> None:
    made: list[Channel] = []
    slots = ClientSlots(lambda: made.append(Channel(len(made))) or made[-1])
    gen_a, first = slots.acquire()
    gen_b, same = slots.acquire()
    assert first is same and slots.connects == 1

    # Call A saw UNAVAILABLE: the channel is retired, but call B still uses it.
    assert slots.release(gen_a) is None
    assert slots.retire(gen_a) is None
    # B retiring the same generation again must not open yet another channel.
    assert slots.retire(gen_b) is None
    assert slots.release(gen_b) is first  # last call done: now the caller may close it

    _, second = slots.acquire()
    assert second is not first and slots.connects == 2


def test_slots_close_returns_everything_and_refuses_new_calls() -> None:
    slots = ClientSlots(lambda: Channel(0))
    generation, channel = slots.acquire()
    assert slots.close() == [channel]
    assert slots.release(generation) is None
    with pytest.raises(ClientError, match="closed"):
        slots.acquire()
