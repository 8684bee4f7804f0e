"""Client for the spec-whisper Triton ensemble: transcribe audio over gRPC without torch.

from spec_whisper_client import WhisperClient

with WhisperClient("localhost:8001") as client:
    result = client.transcribe("talk.flac")
    print(result.text, result.acceptance_rate)
"""

from .aio import AsyncWhisperClient
from .client import WhisperClient
from .errors import ClientError, DeadlineExceeded, InvalidRequest, ServerUnavailable, UnknownLanguage
from .results import HealthStatus, Segment, TranscriptionResult

__version__ = "0.1.0"

__all__ = [
    "AsyncWhisperClient",
    "ClientError",
    "DeadlineExceeded",
    "HealthStatus",
    "InvalidRequest",
    "Segment",
    "ServerUnavailable",
    "TranscriptionResult",
    "UnknownLanguage",
    "WhisperClient",
    "__version__",
]
