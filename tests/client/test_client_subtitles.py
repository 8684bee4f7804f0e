"""SRT/WebVTT output: one cue per file spanning its windows."""

from __future__ import annotations

from spec_whisper_client import TranscriptionResult
from spec_whisper_client.subtitles import to_srt, to_vtt

LONG_TEXT = " The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill."


def result(text: str, windows: tuple[tuple[float, float], ...]) -> TranscriptionResult:
    return TranscriptionResult(text, (), "en", 0.1, 0, 0, 1, windows)


def test_srt_is_one_wrapped_cue_over_all_windows() -> None:
    srt = to_srt(result(LONG_TEXT, ((0.0, 30.0), (30.0, 3725.5))))
    assert srt == (
        "1\n"
        "00:00:00,000 --> 01:02:05,500\n"
        "The quick brown fox jumps over the lazy\n"
        "dog while the cat watches from the warm\n"
        "windowsill.\n"
    )


def test_vtt_uses_dots_and_a_header() -> None:
    vtt = to_vtt(result(" Hello there.", ((0.0, 4.25),)))
    assert vtt == "WEBVTT\n\n00:00:00.000 --> 00:00:04.250\nHello there.\n"


def test_empty_transcript_has_no_cues() -> None:
    assert to_srt(result("  ", ((0.0, 1.0),))) == ""
    assert to_vtt(result("", ((0.0, 1.0),))) == "WEBVTT\n"
