"""asyncio client over tritonclient.grpc.aio, with the same surface as WhisperClient.

Use one instance inside one event loop: its channel belongs to the loop that first used it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import tritonclient.grpc.aio as aioclient
from tqdm import tqdm
from tritonclient.utils import InferenceServerException

from ._base import PROBE_TIMEOUT_S, ClientBase, check_batch_options, check_concurrency, request_inputs
from .audio import AudioInput
from .errors import ClientError, ServerUnavailable, from_triton
from .protocol import parse_result
from .results import HealthStatus, TranscriptionResult

__all__ = ["AsyncWhisperClient"]

T = TypeVar("T")


class AsyncWhisperClient(ClientBase):
    """asyncio twin of WhisperClient.

    >>> async with AsyncWhisperClient("localhost:8001") as client:
    ...     results = await client.transcribe_many(paths, concurrency=16)
    """

    def _new_client(self) -> aioclient.InferenceServerClient:
        return aioclient.InferenceServerClient(self.url, **self._channel_options)

    async def __aenter__(self) -> AsyncWhisperClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every channel; calls still in flight are cancelled."""
        for client in self._slots.close():
            await client.close()

    async def transcribe(
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
        """See WhisperClient.transcribe; audio decoding runs in a worker thread."""
        prepare = functools.partial(
            request_inputs,
            audio,
            sample_rate=sample_rate,
            language=language,
            task=task,
            speculative=speculative,
            draft_length=draft_length,
            max_new_tokens=max_new_tokens,
            send_file_bytes=send_file_bytes,
        )
        # Decoding and resampling are CPU work that would stall every other request on the loop.
        inputs = await asyncio.to_thread(prepare)
        deadline = self._deadline(timeout_s)

        async def infer(client: aioclient.InferenceServerClient) -> TranscriptionResult:
            start = time.perf_counter()
            response = await client.infer(self.model, inputs, client_timeout=deadline, headers=self.headers)
            return parse_result(response, time.perf_counter() - start)

        return await self._call(infer)

    async def transcribe_many(
        self, items: Iterable[AudioInput], *, concurrency: int = 8, progress: bool = False, **options: Any
    ) -> list[TranscriptionResult | ClientError]:
        """See WhisperClient.transcribe_many; an asyncio.Semaphore bounds the requests in flight."""
        check_concurrency(concurrency)
        check_batch_options(self.transcribe, options)
        items = list(items)
        gate = asyncio.Semaphore(concurrency)

        with tqdm(total=len(items), disable=not progress, unit="file") as bar:

            async def run(item: AudioInput) -> TranscriptionResult | ClientError:
                async with gate:
                    try:
                        return await self.transcribe(item, **options)
                    except ClientError as error:
                        return error
                    finally:
                        bar.update()

            return list(await asyncio.gather(*(run(item) for item in items)))

    async def health(self, timeout_s: float = PROBE_TIMEOUT_S) -> HealthStatus:
        """Probe server liveness, server readiness and model readiness, without retrying."""
        live = ready = model_ready = False
        generation, client = self._slots.acquire()
        try:
            live = await client.is_server_live(headers=self.headers, client_timeout=timeout_s)
            ready = live and await client.is_server_ready(headers=self.headers, client_timeout=timeout_s)
            model_ready = ready and await client.is_model_ready(
                self.model, headers=self.headers, client_timeout=timeout_s
            )
        except InferenceServerException as exc:
            error = from_triton(exc)
            if error.status == "UNAVAILABLE":
                await self._close(self._slots.retire(generation))
            return HealthStatus(live, ready, model_ready, error=str(error))
        finally:
            await self._close(self._slots.release(generation))
        return self._health_status(live, ready, model_ready)

    async def is_ready(self, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
        """True when the server is live and ready and the model is loaded."""
        return (await self.health(timeout_s)).ok

    async def wait_until_ready(self, timeout_s: float = 60.0, poll_s: float = 0.5) -> HealthStatus:
        """Poll health() until it is ok; ServerUnavailable with the last reason after timeout_s."""
        give_up = time.monotonic() + timeout_s
        while True:
            status = await self.health(min(PROBE_TIMEOUT_S, max(poll_s, give_up - time.monotonic())))
            if status.ok:
                return status
            if time.monotonic() >= give_up:
                raise ServerUnavailable(f"{self.url} not ready after {timeout_s:g} s: {status.error}")
            await asyncio.sleep(poll_s)

    async def _call(self, fn: Callable[[aioclient.InferenceServerClient], Awaitable[T]]) -> T:
        """Run `fn` on the current channel, retrying transient failures with backoff."""
        retries_done = 0
        while True:
            generation, client = self._slots.acquire()
            try:
                return await fn(client)
            except InferenceServerException as exc:
                error = from_triton(exc)
                cause = exc
            finally:
                await self._close(self._slots.release(generation))
            if not self.retry.should_retry(error, retries_done):
                raise error from cause
            if error.status == "UNAVAILABLE":
                await self._close(self._slots.retire(generation))
            await asyncio.sleep(self.retry.delay_s(retries_done))
            retries_done += 1

    @staticmethod
    async def _close(client: aioclient.InferenceServerClient | None) -> None:
        if client is not None:
            await client.close()
