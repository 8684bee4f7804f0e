"""Client errors, mapped from gRPC status codes so callers never parse tritonclient exceptions."""

from __future__ import annotations

import re

from tritonclient.utils import InferenceServerException

__all__ = [
    "ClientError",
    "DeadlineExceeded",
    "InvalidRequest",
    "ServerUnavailable",
    "UnknownLanguage",
    "from_triton",
]


class ClientError(Exception):
    """Base of every error this package raises; `message` is the server's (or our) explanation.

    `status` is the gRPC status name ("INVALID_ARGUMENT", "UNAVAILABLE", ...) or None when the
    error was raised on the client before anything was sent.
    """

    def __init__(self, message: str, status: str | None = None, debug_details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.debug_details = debug_details

    def __str__(self) -> str:
        return f"[{self.status}] {self.message}" if self.status else self.message

    def __reduce__(self) -> tuple[type, tuple[str, str | None, str | None]]:
        # Keep the extra fields when errors cross process boundaries (multiprocessing, pickling).
        return (type(self), (self.message, self.status, self.debug_details))


class InvalidRequest(ClientError, ValueError):
    """The request itself is wrong (bad audio, bad option); retrying cannot help."""


class UnknownLanguage(InvalidRequest):
    """The server does not know the requested language code."""


class ServerUnavailable(ClientError, ConnectionError):
    """The server cannot be reached, is not ready, or does not serve the model."""


class DeadlineExceeded(ClientError, TimeoutError):
    """The request did not finish within its deadline."""


# The server words its errors freely ("unknown language 'xx'", "language 'xx' is not supported"),
# so look for both ideas anywhere in the message rather than for one exact sentence.
_LANGUAGE = re.compile(r"\blanguage\b", re.IGNORECASE)
_UNKNOWN = re.compile(
    r"\b(unknown|unsupported|unrecognized|invalid|not (a )?(supported|recognized|known|valid))\b",
    re.IGNORECASE,
)

_BY_STATUS: dict[str, type[ClientError]] = {
    "INVALID_ARGUMENT": InvalidRequest,
    "UNAVAILABLE": ServerUnavailable,
    # Triton answers NOT_FOUND for a model it does not serve (wrong name, not loaded yet).
    "NOT_FOUND": ServerUnavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
}


def status_name(exc: InferenceServerException) -> str | None:
    """'StatusCode.INVALID_ARGUMENT' -> 'INVALID_ARGUMENT'; None for client-side tritonclient errors."""
    status = exc.status()
    if not status:
        return None
    return str(status).rsplit(".", 1)[-1]


def from_triton(exc: InferenceServerException) -> ClientError:
    """Translate a tritonclient exception into the matching ClientError subclass."""
    status = status_name(exc)
    message = exc.message() or str(exc)
    cls = _BY_STATUS.get(status or "", ClientError)
    if cls is InvalidRequest and _LANGUAGE.search(message) and _UNKNOWN.search(message):
        cls = UnknownLanguage
    return cls(message, status=status, debug_details=exc.debug_details())
