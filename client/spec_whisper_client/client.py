"""Synchronous client over tritonclient.grpc; thread-safe, one channel shared by all threads."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

import tritonclient.grpc as grpcclient
from tqdm import tqdm
from tritonclient.utils import InferenceServerException

from ._base import PROBE_TIMEOUT_S, ClientBase, check_batch_options, check_concurrency, request_inputs
from .audio import AudioInput
from .channel import TritonGrpcClient
from .errors import ClientError, ServerUnavailable, from_triton
from .protocol import parse_result
from .results import HealthStatus, TranscriptionResult

__all__ = ["WhisperClient"]

T = TypeVar("T")


class WhisperClient(ClientBase):
    """Transcribe audio with the `whisper` ensemble on a Triton server.

    >>> with WhisperClient("localhost:8001") as client:
    ...     print(client.transcribe("talk.flac", language="en").text)
    """

    def _new_client(self) -> grpcclient.InferenceServerClient:
        return TritonGrpcClient(self.url, **self._channel_options)

    def __enter__(self) -> WhisperClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every channel; calls still in flight are cancelled."""
        for client in self._slots.close():
            client.close()

    def transcribe(
        self,
        audio: AudioInput,
        *,
        sample_rate: int | None = None,
        language: str | None = None,
        task: str = "transcribe",
        speculative: bool = True,
        draft_length: int | None = None,
        max_new_tokens: int | None = None,
        timeout_s: float | None = None,
        send_file_bytes: bool | None = None,
    ) -> TranscriptionResult:
        """Transcribe one recording.

        `audio` is a file path, a file's bytes, a numpy array (with `sample_rate`) or an
        (array, sample_rate) tuple. Paths are decoded here and sent as 16 kHz samples unless
        `send_file_bytes=True`; bytes are sent as they are unless `send_file_bytes=False`.
        `language=None` detects it. `timeout_s` overrides the client's per-attempt deadline.

        Raises InvalidRequest (bad audio or options, before any network call, or the server's
        INVALID_ARGUMENT), UnknownLanguage, ServerUnavailable, DeadlineExceeded or ClientError.
        """
        inputs = request_inputs(
            audio,
            sample_rate=sample_rate,
            language=language,
            task=task,
            speculative=speculative,
            draft_length=draft_length,
            max_new_tokens=max_new_tokens,
            send_file_bytes=send_file_bytes,
        )
        deadline = self._deadline(timeout_s)

        def infer(client: grpcclient.InferenceServerClient) -> TranscriptionResult:
            start = time.perf_counter()
            response = client.infer(self.model, inputs, client_timeout=deadline, headers=self.headers)
            return parse_result(response, time.perf_counter() - start)

        return self._call(infer)

    def transcribe_many(
        self, items: Iterable[AudioInput], *, concurrency: int = 8, progress: bool = False, **options: Any
    ) -> list[TranscriptionResult | ClientError]:
        """Transcribe many recordings with up to `concurrency` requests in flight.

        Keeping several requests in flight is what lets the server's dynamic batcher batch them.
        Results come back in input order; an item that fails holds its ClientError instead of a
        result, and the others go on. `options` are those of `transcribe`.
        """
        check_concurrency(concurrency)
        check_batch_options(self.transcribe, options)
        items = list(items)
        results: list[TranscriptionResult | ClientError | None] = [None] * len(items)

        def run(index: int, item: AudioInput) -> None:
            # Audio is decoded inside the worker, so at most `concurrency` files sit in memory.
            try:
                results[index] = self.transcribe(item, **options)
            except ClientError as error:
                results[index] = error

        with (
            tqdm(total=len(items), disable=not progress, unit="file") as bar,
            ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="spec-whisper") as pool,
        ):
            futures = [pool.submit(run, index, item) for index, item in enumerate(items)]
            try:
                for future in as_completed(futures):
                    future.result()  # re-raises only bugs; ClientErrors are stored in place
                    bar.update()
            except BaseException:
                # Ctrl-C or a bug: do not start the items still queued.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return results  # type: ignore[return-value]  # every slot was filled above

    def health(self, timeout_s: float = PROBE_TIMEOUT_S) -> HealthStatus:
        """Probe server liveness, server readiness and model readiness, without retrying."""
        live = ready = model_ready = False
        generation, client = self._slots.acquire()
        try:
            live = client.is_server_live(headers=self.headers, client_timeout=timeout_s)
            ready = live and client.is_server_ready(headers=self.headers, client_timeout=timeout_s)
            model_ready = ready and client.is_model_ready(
                self.model, headers=self.headers, client_timeout=timeout_s
            )
        except InferenceServerException as exc:
            error = from_triton(exc)
            if error.status == "UNAVAILABLE":
                self._close(self._slots.retire(generation))
            return HealthStatus(live, ready, model_ready, error=str(error))
        finally:
            self._close(self._slots.release(generation))
        return self._health_status(live, ready, model_ready)

    def is_ready(self, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
        """True when the server is live and ready and the model is loaded."""
        return self.health(timeout_s).ok

    def wait_until_ready(self, timeout_s: float = 60.0, poll_s: float = 0.5) -> HealthStatus:
        """Poll health() until it is ok; ServerUnavailable with the last reason after timeout_s."""
        give_up = time.monotonic() + timeout_s
        while True:
            status = self.health(min(PROBE_TIMEOUT_S, max(poll_s, give_up - time.monotonic())))
            if status.ok:
                return status
            if time.monotonic() >= give_up:
                raise ServerUnavailable(f"{self.url} not ready after {timeout_s:g} s: {status.error}")
            time.sleep(poll_s)

    def _call(self, fn: Callable[[grpcclient.InferenceServerClient], T]) -> T:
        """Run `fn` on the current channel, retrying transient failures with backoff."""
        retries_done = 0
        while True:
            generation, client = self._slots.acquire()
            try:
                return fn(client)
            except InferenceServerException as exc:
                error = from_triton(exc)
                cause = exc
            finally:
                self._close(self._slots.release(generation))
            if not self.retry.should_retry(error, retries_done):
                raise error from cause
            if error.status == "UNAVAILABLE":
                self._close(self._slots.retire(generation))
            time.sleep(self.retry.delay_s(retries_done))
            retries_done += 1

    @staticmethod
    def _close(client: grpcclient.InferenceServerClient | None) -> None:
        if client is not None:
            client.close()
