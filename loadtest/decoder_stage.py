"""The decoder step alone: what the ensemble's first two steps hand it, computed once per clip, and a
client that sends it straight to `whisper_decoder`.

Through the ensemble the decoder decodes only what the encoder has finished. On a CPU the encoder is
the slower step, so the decoder idles between batches, and its batches are whatever queued meanwhile:
a faster decoder finds fewer rows waiting, so its per-clip cost there mixes its speed with the batches
it happened to get. Sent straight to, with every user's next request ready at once, the decoder is the
bottleneck: its clips per second are the step's capacity at that load, speculative beside plain.

Free of gevent and Locust, so scripts can import it without monkey-patching their own process.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from spec_whisper_client import ClientError
from spec_whisper_client.audio import PreparedAudio
from spec_whisper_client.channel import TritonGrpcClient
from spec_whisper_client.protocol import RequestOptions, build_inputs
from tritonclient.utils import np_to_triton_dtype, shared_memory

__all__ = [
    "DecoderResult",
    "DecoderStageClient",
    "SharedDecoderInputs",
    "compute_decoder_inputs",
    "load_decoder_inputs",
]

DECODER = "whisper_decoder"
# The inputs the ensemble maps from `whisper_features` and `whisper_encoder` to the decoder.
STATE_NAMES = ("ENCODER_STATES", "ASSISTANT_STATES", "WINDOW_SAMPLES")


@dataclass(frozen=True)
class DecoderResult:
    text: str
    drafted: int
    accepted: int
    latency_s: float


def _input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def _infer(
    client: grpcclient.InferenceServerClient,
    model: str,
    inputs: list[grpcclient.InferInput],
    outputs: Iterable[str],
    timeout_s: float | None = None,
) -> dict[str, np.ndarray]:
    requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
    result = client.infer(model, inputs, outputs=requested, client_timeout=timeout_s)
    return {out.name(): result.as_numpy(out.name()) for out in requested}


def compute_decoder_inputs(url: str, clips: Iterable, path: Path) -> Path:
    """Run each clip (`loadtest.clips.Clip`) through `whisper_features` and `whisper_encoder` once,
    both decoding modes (OPTIONS carries SPECULATIVE), and save the decoder's inputs to `path` (.npz)."""
    arrays: dict[str, np.ndarray] = {}
    with TritonGrpcClient(url) as client:
        for clip in clips:
            for speculative in (False, True):
                options = RequestOptions(language=clip.language, speculative=speculative)
                features = _infer(
                    client,
                    "whisper_features",
                    build_inputs(PreparedAudio(samples=clip.pcm), options),
                    ("MEL", "WINDOW_SAMPLES", "OPTIONS"),
                )
                arrays[f"{clip.id}/OPTIONS/{int(speculative)}"] = features["OPTIONS"]
            encoded = _infer(
                client,
                "whisper_encoder",
                [_input("MEL", features["MEL"])],
                ("ENCODER_STATES", "ASSISTANT_STATES"),
            )
            arrays[f"{clip.id}/WINDOW_SAMPLES"] = features["WINDOW_SAMPLES"]
            for name in ("ENCODER_STATES", "ASSISTANT_STATES"):
                arrays[f"{clip.id}/{name}"] = encoded[name]
    np.savez(path, **arrays)
    return path


def load_decoder_inputs(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Clip id -> input name (OPTIONS/0 and OPTIONS/1 for plain and speculative) -> array."""
    by_clip: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=True) as saved:  # OPTIONS are byte strings (object arrays)
        for key in saved.files:
            clip_id, name = key.split("/", 1)
            by_clip.setdefault(clip_id, {})[name] = saved[key]
    return by_clip


class SharedDecoderInputs:
    """Every clip's saved states in one system shared-memory region registered with the server, so a
    request carries offsets instead of 3 MB a window. Sent inline, one Locust process serialises the N
    calls of a client-side batch one after another, too slowly for the decoder's dynamic batcher (it
    waits 5 ms for more rows) to put them in one batch. The server must run on this host."""

    def __init__(self, url: str, inputs: dict[str, dict[str, np.ndarray]]) -> None:
        self.name = f"spec_whisper_decoder_stage_{os.getpid()}"
        self.options = {
            clip: {k: v for k, v in arrays.items() if k.startswith("OPTIONS/")}
            for clip, arrays in inputs.items()
        }
        self.layout: dict[str, list[tuple[str, np.ndarray, int]]] = {}
        size = 0
        for clip, arrays in inputs.items():
            self.layout[clip] = []
            for name in STATE_NAMES:
                self.layout[clip].append((name, arrays[name], size))
                size += -(-arrays[name].nbytes // 64) * 64
        size = max(size, 64)  # a region of zero bytes cannot be created
        self.region = shared_memory.create_shared_memory_region(self.name, f"/{self.name}", size)
        for entries in self.layout.values():
            for _, array, offset in entries:
                if array.nbytes:
                    shared_memory.set_shared_memory_region(self.region, [np.ascontiguousarray(array)], offset)
        self.client = TritonGrpcClient(url)
        self.client.register_system_shared_memory(self.name, f"/{self.name}", size)

    def inputs_for(self, clip_id: str, speculative: bool) -> list[grpcclient.InferInput]:
        entries = self.layout.get(clip_id)
        if entries is None:
            raise ClientError(f"no saved decoder inputs for clip {clip_id}")
        inputs = []
        for name, array, offset in entries:
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            if array.nbytes:
                tensor.set_shared_memory(self.name, array.nbytes, offset)
            else:  # a region cannot hold zero bytes; an empty tensor costs nothing inline
                tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return [*inputs, _input("OPTIONS", self.options[clip_id][f"OPTIONS/{int(speculative)}"])]

    def close(self) -> None:
        with contextlib.suppress(grpcclient.InferenceServerException):
            self.client.unregister_system_shared_memory(self.name)
        self.client.close()
        shared_memory.destroy_shared_memory_region(self.region)


class DecoderStageClient:
    """Sends saved decoder inputs to `whisper_decoder` over gRPC, one clip per request."""

    def __init__(self, url: str, inputs: SharedDecoderInputs, timeout_s: float = 600.0) -> None:
        self.url = url
        self.client: grpcclient.InferenceServerClient | None = None
        self.inputs = inputs
        self.timeout_s = timeout_s

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def decode(self, clip_id: str, speculative: bool) -> DecoderResult:
        inputs = self.inputs.inputs_for(clip_id, speculative)
        if self.client is None:
            self.client = TritonGrpcClient(self.url)
        began = time.perf_counter()
        try:
            out = _infer(self.client, DECODER, inputs, ("TEXT", "STATS"), self.timeout_s)
        except grpcclient.InferenceServerException as error:
            raise ClientError(f"{DECODER}: {error.message()}") from error
        latency = time.perf_counter() - began
        text = out["TEXT"].reshape(-1)[0]
        stats = out["STATS"].reshape(-1)
        return DecoderResult(
            text=text.decode() if isinstance(text, bytes) else str(text),
            drafted=int(stats[0]),
            accepted=int(stats[1]),
            latency_s=latency,
        )
