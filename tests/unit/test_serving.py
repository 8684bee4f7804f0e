"""The Triton glue fails one bad request alone; checked here with a minimal stand-in for the backend's
utils module (`triton_python_backend_utils` exists only inside the stub). The real server is covered by
tests/integration/test_errors.py."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from spec_whisper import serving


class _TritonError(Exception):
    INVALID_ARG, CANCELLED, INTERNAL = "INVALID_ARG", "CANCELLED", "INTERNAL"

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Response:
    outputs: list | None = None
    error: _TritonError | None = None


@dataclass
class _Request:
    value: object
    cancelled: bool = False

    def is_cancelled(self) -> bool:
        return self.cancelled


PB_UTILS = SimpleNamespace(
    TritonError=_TritonError,
    InferenceResponse=_Response,
    Logger=SimpleNamespace(log_error=lambda message: None),
)


def _parse(request: _Request) -> int:
    if not isinstance(request.value, int):
        raise ValueError(f"not a number: {request.value!r}")
    if request.value < 0:
        raise RuntimeError("model failure")
    return request.value * 2


def test_each_request_fails_alone_with_its_own_code() -> None:
    requests = [_Request(1), _Request("x"), _Request(3, cancelled=True), _Request(-1), _Request(5)]
    responses, parsed = serving.parse_each(PB_UTILS, requests, _parse)
    assert parsed == {0: 2, 4: 10}
    assert responses[0] is None and responses[4] is None
    codes = [r.error.code for r in responses[1:4]]
    assert codes == ["INVALID_ARG", "CANCELLED", "INTERNAL"]
    assert "not a number: 'x'" in str(responses[1].error)
    assert "RuntimeError: model failure" in str(responses[3].error)


def test_numpy_2_is_refused_at_load_with_its_cause_unless_allowed() -> None:
    with pytest.raises(RuntimeError, match=r"numpy 2\.4\.6 .*BYTES.*numpy<2.*allow_numpy2"):
        serving.check_backend_numpy({}, version="2.4.6")
    with pytest.raises(RuntimeError):
        serving.check_backend_numpy({"allow_numpy2": "no"}, version="2.0.0")
    serving.check_backend_numpy({"allow_numpy2": " Yes "}, version="2.4.6")
    serving.check_backend_numpy({}, version="1.26.4")
    serving.check_backend_numpy({})  # the numpy of this environment, which the project pins below 2
