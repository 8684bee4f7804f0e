"""The gRPC client object is closed at most once, so the garbage collector never closes it again."""

from __future__ import annotations

import gc

from spec_whisper_client import WhisperClient
from spec_whisper_client.channel import TritonGrpcClient


def _count_channel_closes(client: TritonGrpcClient) -> list[int]:
    closes: list[int] = []
    close = client._channel.close
    client._channel.close = lambda: (closes.append(1), close())[1]
    return closes


def test_a_closed_client_is_not_closed_again_by_close_or_collection() -> None:
    client = TritonGrpcClient("localhost:1")  # nothing listens; opening a channel does not connect
    closes = _count_channel_closes(client)
    client.close()
    client.close()
    client.__del__()
    assert closes == [1]


def test_an_unclosed_client_is_still_closed_when_collected() -> None:
    client = TritonGrpcClient("localhost:1")
    closes = _count_channel_closes(client)
    del client
    gc.collect()
    assert closes == [1]


def test_whisper_client_opens_channels_that_close_once() -> None:
    with WhisperClient("localhost:1") as whisper:
        channel = whisper._new_client()
        assert isinstance(channel, TritonGrpcClient)
        channel.close()
