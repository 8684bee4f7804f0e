"""SRT and WebVTT from a result's segments.

One cue per segment (SEGMENT_TEXT, SEGMENT_TIMES). The `whisper` ensemble cuts its merged transcript
where its 30 s windows meet and times each piece by the audio only its window covers: a cue per
window, at most about 20 s long. `whisper_long` returns Whisper's own segments, timed by its
timestamp tokens: a cue per phrase.
"""

from __future__ import annotations

import textwrap

from .results import TranscriptionResult

__all__ = ["cues", "to_srt", "to_vtt"]

# Common subtitle guidance: about 42 characters per line keeps lines readable on screen.
LINE_WIDTH = 42


def cues(result: TranscriptionResult) -> list[tuple[float, float, str]]:
    """(start, end, text) cues, one per non-empty segment; a result without segments (a server that
    predates them) gets one cue spanning its windows."""
    segments = [(s.start, s.end, s.text.strip()) for s in result.segments]
    if not segments and result.text.strip():
        windows = result.windows or ((0.0, 0.0),)
        segments = [(windows[0][0], windows[-1][1], result.text.strip())]
    return [(start, end, "\n".join(textwrap.wrap(text, LINE_WIDTH))) for start, end, text in segments if text]


def to_srt(result: TranscriptionResult) -> str:
    blocks = [
        f"{number}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n"
        for number, (start, end, text) in enumerate(cues(result), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(result: TranscriptionResult) -> str:
    blocks = ["WEBVTT\n"]
    blocks += [
        f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n" for start, end, text in cues(result)
    ]
    return "\n".join(blocks)


def _timestamp(seconds: float, decimal_marker: str) -> str:
    # SRT writes "01:02:05,500" and WebVTT "01:02:05.500"; the rest of the format is the same.
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"
