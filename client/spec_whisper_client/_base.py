"""Settings and request preparation shared by WhisperClient and AsyncWhisperClient."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

import tritonclient.grpc as grpcclient

from .audio import AudioInput, prepare_audio
from .protocol import RequestOptions, build_inputs
from .results import HealthStatus
from .retry import ClientSlots, RetryPolicy

DEFAULT_URL = "localhost:8001"
DEFAULT_MODEL = "whisper"
# Health probes should answer "no" quickly rather than hang on an unreachable host.
PROBE_TIMEOUT_S = 5.0


class ClientBase:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        model: str = DEFAULT_MODEL,
        *,
        ssl: bool = False,
        root_certificates: str | None = None,
        private_key: str | None = None,
        certificate_chain: str | None = None,
        headers: Mapping[str, str] | None = None,
        retries: int = 3,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        retry_on_deadline: bool = True,
        timeout_s: float | None = None,
    ) -> None:
        """`url` is the gRPC host:port. TLS files are paths, read by tritonclient. `headers` go
        with every call (auth tokens, routing). `timeout_s` is the default deadline of each
        attempt; with retries a call can take up to (retries + 1) times as long plus backoff.
        """
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        # tritonclient reads these only when the first channel opens; a typo should fail here.
        for name, path in (
            ("root_certificates", root_certificates),
            ("private_key", private_key),
            ("certificate_chain", certificate_chain),
        ):
            if path is not None and not os.path.isfile(path):
                raise FileNotFoundError(f"{name}: no such file: {path}")
        self.url = url
        self.model = model
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.retry = RetryPolicy(
            retries=retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            retry_on_deadline=retry_on_deadline,
        )
        self._channel_options: dict[str, Any] = {
            "ssl": ssl,
            "root_certificates": root_certificates,
            "private_key": private_key,
            "certificate_chain": certificate_chain,
        }
        self._slots: ClientSlots[Any] = ClientSlots(self._new_client)

    def _new_client(self) -> Any:
        """A tritonclient InferenceServerClient (sync or asyncio) on a new channel."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, model={self.model!r})"

    def _deadline(self, timeout_s: float | None) -> float | None:
        return self.timeout_s if timeout_s is None else timeout_s

    def _health_status(self, live: bool, ready: bool, model_ready: bool) -> HealthStatus:
        error = None
        if not live:
            error = "the server is not live"
        elif not ready:
            error = "the server is not ready"
        elif not model_ready:
            error = f"model {self.model!r} is not ready (still loading, failed to load, or unknown)"
        return HealthStatus(live, ready, model_ready, error)


def request_inputs(
    audio: AudioInput,
    *,
    sample_rate: int | None,
    language: str | None,
    task: str,
    speculative: bool,
    draft_length: int | None,
    max_new_tokens: int | None,
    send_file_bytes: bool | None,
) -> list[grpcclient.InferInput]:
    """Validate options first (cheap), then the audio (may decode a file), then build tensors."""
    options = RequestOptions(language, task, speculative, draft_length, max_new_tokens)
    prepared = prepare_audio(audio, sample_rate=sample_rate, send_file_bytes=send_file_bytes)
    return build_inputs(prepared, options)


def check_batch_options(transcribe: Any, options: Mapping[str, Any]) -> None:
    """Fail a transcribe_many call once, up front, instead of once per item.

    Unknown keywords are a TypeError (a typo must not become N identical per-item errors), and
    bad option values raise InvalidRequest before any audio is read.
    """
    allowed = {
        name
        for name, param in inspect.signature(transcribe).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"transcribe_many() got unexpected option(s): {', '.join(unknown)}")
    fields = ("language", "task", "speculative", "draft_length", "max_new_tokens")
    RequestOptions(**{name: options[name] for name in fields if name in options})


def check_concurrency(concurrency: int) -> None:
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")


__all__ = ["ClientBase", "check_batch_options", "check_concurrency", "request_inputs"]
