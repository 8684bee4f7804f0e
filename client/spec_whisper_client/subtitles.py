"""SRT and WebVTT from a result's window timings.

The server returns the transcript as one text and the (start, end) of each 30 s window, but not
which words fell in which window, so a file becomes ONE cue spanning its windows. Splitting the
text across windows by guesswork would put words on screen at the wrong time. Per-segment cues
need timestamp tokens from the server (not in the contract yet).
"""

from __future__ import annotations

import textwrap

from .results import TranscriptionResult

__all__ = ["cues", "to_srt", "to_vtt"]

# Common subtitle guidance: about 42 characters per line keeps lines readable on screen.
LINE_WIDTH = 42


def cues(result: TranscriptionResult) -> list[tuple[float, float, str]]:
    """(start, end, text) cues; none for an empty transcript."""
    text = result.text.strip()
    if not text:
        return []
    if result.windows:
        start, end = result.windows[0][0], result.windows[-1][1]
    else:
        start = end = 0.0
    return [(start, end, "\n".join(textwrap.wrap(text, LINE_WIDTH)) or text)]


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
