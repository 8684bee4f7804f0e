"""A scripted stand-in for Triton's gRPC service, for the client's error-handling and CLI tests.

It speaks the real protocol (GRPCInferenceService from tritonclient's generated stubs) but knows
nothing about Whisper: each ModelInfer call plays the next scripted step (fail with a status,
stall, or answer with canned outputs). It proves how the client reacts to the server, never
that the server works; that is what test_live.py and tests/integration are for.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor, triton_to_np_dtype

Step = Callable[[service_pb2.ModelInferRequest, grpc.ServicerContext], service_pb2.ModelInferResponse]


@dataclass
class Outputs:
    text: str = "hello world"
    tokens: Sequence[int] = (1, 2, 3)
    language: str = "en"
    stats: Sequence[int] = (10, 8, 4)  # drafted, accepted, main decoder passes
    windows: Sequence[tuple[float, float]] = ((0.0, 5.5),)
    # (start, end, text); None: the whole text as one segment over the windows.
    segments: Sequence[tuple[float, float, str]] | None = None

    def response(self, request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
        response = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
        windows = np.array(self.windows, dtype=np.float32).reshape(1, -1, 2)
        segments = self.segments
        if segments is None:
            segments = [(self.windows[0][0], self.windows[-1][1], self.text)] if self.windows else []
        texts = np.array([[text.encode() for _, _, text in segments]], dtype=np.object_).reshape(1, -1)
        times = np.array([[start, end] for start, end, _ in segments], dtype=np.float32).reshape(1, -1, 2)
        for name, array, datatype in (
            ("TEXT", np.array([[self.text.encode()]], dtype=np.object_), "BYTES"),
            ("TOKENS", np.array([list(self.tokens)], dtype=np.int32), "INT32"),
            ("LANGUAGE_USED", np.array([[self.language.encode()]], dtype=np.object_), "BYTES"),
            ("STATS", np.array([list(self.stats)], dtype=np.int64), "INT64"),
            ("WINDOWS", windows, "FP32"),
            ("SEGMENT_TEXT", texts, "BYTES"),
            ("SEGMENT_TIMES", times, "FP32"),
        ):
            tensor = response.outputs.add(name=name, datatype=datatype)
            tensor.shape.extend(array.shape)
            raw = serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes()
            response.raw_output_contents.append(raw)
        return response


def ok(outputs: Outputs | None = None) -> Step:
    outputs = outputs or Outputs()
    return lambda request, context: outputs.response(request)


def fail(code: grpc.StatusCode, message: str) -> Step:
    def step(request: service_pb2.ModelInferRequest, context: grpc.ServicerContext) -> None:
        context.abort(code, message)

    return step


def slow(seconds: float, then: Step | None = None) -> Step:
    then = then or ok()

    def step(
        request: service_pb2.ModelInferRequest, context: grpc.ServicerContext
    ) -> service_pb2.ModelInferResponse:
        time.sleep(seconds)
        return then(request, context)

    return step


@dataclass
class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Plays `script` one step per ModelInfer call, then `default` forever."""

    script: deque[Step] = field(default_factory=deque)
    default: Step = field(default_factory=ok)
    live: bool = True
    ready: bool = True
    model_ready: bool = True
    infer_calls: int = 0
    # Decoded inputs of every ModelInfer request, in arrival order.
    requests: list[dict[str, np.ndarray]] = field(default_factory=list)
    # gRPC metadata (headers) of every ModelInfer request.
    metadata: list[dict[str, str]] = field(default_factory=list)
    max_in_flight: int = 0
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def play(self, *steps: Step) -> FakeTriton:
        self.script.extend(steps)
        return self

    # Method names are fixed by the service definition (service_pb2_grpc).
    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=self.live)

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.ready)

    def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=self.model_ready and request.name == "whisper")

    def ModelInfer(self, request, context):
        with self._lock:
            self.infer_calls += 1
            self.requests.append(_decode_inputs(request))
            self.metadata.append({key: value for key, value in context.invocation_metadata()})
            step = self.script.popleft() if self.script else self.default
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            return step(request, context)
        finally:
            with self._lock:
                self._in_flight -= 1


def _decode_inputs(request: service_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    decoded = {}
    for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
        shape = tuple(tensor.shape)
        if tensor.datatype == "BYTES":
            decoded[tensor.name] = deserialize_bytes_tensor(raw).reshape(shape)
        else:
            decoded[tensor.name] = np.frombuffer(raw, dtype=triton_to_np_dtype(tensor.datatype)).reshape(
                shape
            )
    return decoded


class FakeServer:
    """Runs a FakeTriton on 127.0.0.1 (a free port unless one is given) in a background thread pool."""

    def __init__(self, servicer: FakeTriton, port: int = 0, workers: int = 16) -> None:
        self.servicer = servicer
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self.url = f"127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServer:
        self._server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        # grace=0 aborts stalled calls at once, so a `slow` step cannot hold up teardown.
        self._server.stop(grace=0).wait()
