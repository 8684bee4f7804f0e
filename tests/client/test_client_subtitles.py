"""SRT/WebVTT output: one cue per segment (the part of the transcript each window contributed)."""

from __future__ import annotations

from spec_whisper_client import Segment, TranscriptionResult
from spec_whisper_client.subtitles import to_srt, to_vtt

LONG_TEXT = " The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill."


def result(text: str, windows, segments=()) -> TranscriptionResult:
    return TranscriptionResult(text, (), "en", 0.1, 0, 0, 1, windows, tuple(Segment(*s) for s in segments))


def test_srt_has_one_wrapped_cue_per_segment() -> None:
    segments = ((0.0, 25.0, LONG_TEXT), (25.0, 3725.5, " And then it rained."))
    srt = to_srt(result(LONG_TEXT + " And then it rained.", ((0.0, 30.0), (20.0, 3725.5)), segments))
    assert srt == (
        "1\n"
        "00:00:00,000 --> 00:00:25,000\n"
        "The quick brown fox jumps over the lazy\n"
        "dog while the cat watches from the warm\n"
        "windowsill.\n"
        "\n"
        "2\n"
        "00:00:25,000 --> 01:02:05,500\n"
        "And then it rained.\n"
    )


def test_empty_segments_get_no_cue_and_cues_stay_numbered() -> None:
    segments = ((0.0, 25.0, " One."), (25.0, 45.0, "  "), (45.0, 60.0, " Three."))
    srt = to_srt(result(" One. Three.", ((0.0, 30.0), (20.0, 50.0), (40.0, 60.0)), segments))
    assert srt.count("-->") == 2 and "2\n00:00:45,000 --> 00:01:00,000\nThree." in srt


def test_a_result_without_segments_is_one_cue_over_its_windows() -> None:
    srt = to_srt(result(LONG_TEXT, ((0.0, 30.0), (30.0, 3725.5))))
    assert srt.startswith("1\n00:00:00,000 --> 01:02:05,500\nThe quick brown fox")
    assert srt.count("-->") == 1


def test_vtt_uses_dots_and_a_header() -> None:
    vtt = to_vtt(result(" Hello there.", ((0.0, 4.25),), ((0.0, 4.25, " Hello there."),)))
    assert vtt == "WEBVTT\n\n00:00:00.000 --> 00:00:04.250\nHello there.\n"


def test_empty_transcript_has_no_cues() -> None:
    assert to_srt(result("  ", ((0.0, 1.0),), ((0.0, 1.0, "  "),))) == ""
    assert to_vtt(result("", ((0.0, 1.0),))) == "WEBVTT\n"
