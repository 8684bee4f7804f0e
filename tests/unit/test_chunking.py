from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from spec_whisper.audio import SAMPLE_RATE, decode_audio
from spec_whisper.chunking import Window, merge_segments, merge_windows, split_windows

LONG_FORM = "longform/librispeech_test_other_2609-156975_3080-5032_concat.flac"
SR = SAMPLE_RATE


def _check_tiling(windows: list[Window], total: int, size: int, left: int, right: int) -> None:
    assert windows[0].start == 0 and windows[0].stride_left == 0
    assert windows[-1].end == total and windows[-1].stride_right == 0
    for w in windows:
        assert 0 < len(w) <= size
    # The parts each window owns alone tile the audio with no gap and no overlap...
    owned = [(w.start + w.stride_left, w.end - w.stride_right) for w in windows]
    assert owned[0][0] == 0 and owned[-1][1] == total
    for (_, a_end), (b_start, _) in pairwise(owned):
        assert a_end == b_start
    # ...and neighbours share exactly left + right samples.
    for a, b in pairwise(windows):
        assert a.stride_right == right and b.stride_left == left
        assert a.end - b.start == left + right


def test_long_form_recording_is_covered_with_10s_overlaps(speech_dir: Path) -> None:
    samples = decode_audio(speech_dir / LONG_FORM)
    assert len(samples) > 200 * SR
    windows = split_windows(samples)
    # 203 s with a 20 s step: starts at 0, 20, ..., 180; the window at 180 s reaches the end.
    assert [w.start // SR for w in windows] == list(range(0, 181, 20))
    _check_tiling(windows, len(samples), 30 * SR, 5 * SR, 5 * SR)


@pytest.mark.parametrize("seconds", [30.5, 50.0, 50.01, 61.0, 95.3])
def test_tiling_for_awkward_lengths(seconds: float) -> None:
    total = round(seconds * SR)
    windows = split_windows(np.zeros(total, dtype=np.float32))
    _check_tiling(windows, total, 30 * SR, 5 * SR, 5 * SR)


def test_asymmetric_strides() -> None:
    total = 100 * SR
    windows = split_windows(np.zeros(total), window_s=30.0, stride_s=(4.0, 6.0))
    assert windows[1].start == 20 * SR
    _check_tiling(windows, total, 30 * SR, 4 * SR, 6 * SR)


@pytest.mark.parametrize("seconds", [0.5, 29.9, 30.0])
def test_short_audio_is_one_window(seconds: float) -> None:
    total = round(seconds * SR)
    assert split_windows(np.zeros(total)) == [Window(0, total, 0, 0)]


def test_empty_audio_has_no_windows() -> None:
    assert split_windows(np.zeros(0)) == []


@pytest.mark.parametrize("stride", [(15.0, 15.0), (-1.0, 5.0), 20.0])
def test_bad_strides(stride: float | tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="stride"):
        split_windows(np.zeros(SR), stride_s=stride)


# --- merging ---

W3 = split_windows(np.zeros(70 * SR))  # three windows, each overlapping the next by 10 s


def test_merge_drops_the_overlap() -> None:
    words = list(range(100, 160))
    # Each window repeats the 8 tokens around its seam with the previous one.
    merged = merge_windows([words[:24], words[16:44], words[36:]], W3)
    assert merged == words


def test_merge_drops_garbled_edges() -> None:
    words = list(range(100, 140))
    # Window 1 ends in a cut-off word (9), window 2 starts with one (8); both sides agree in between.
    first = [*words[:20], 9]
    second = [8, *words[13:]]
    assert merge_windows([first, second], W3[:2]) == words


def test_merge_survives_a_disagreement_inside_the_overlap() -> None:
    words = list(range(100, 140))
    first = words[:20]
    second = words[12:]
    second[3] = 7  # token 115 transcribed differently by the second window
    merged = merge_windows([first, second], W3[:2])
    assert merged == words  # the seam goes in the longest agreeing run, after the disagreement


def test_merge_concatenates_when_no_overlap_is_found() -> None:
    assert merge_windows([[1, 2, 3], [4, 5, 6]], W3[:2]) == [1, 2, 3, 4, 5, 6]
    # One or two agreeing tokens (a shared ", and") are not evidence enough.
    assert merge_windows([[1, 2, 3], [3, 5, 6]], W3[:2]) == [1, 2, 3, 3, 5, 6]
    assert merge_windows([[1, 2, 3, 4], [3, 4, 5, 6]], W3[:2]) == [1, 2, 3, 4, 3, 4, 5, 6]


def test_merge_skips_empty_windows() -> None:
    assert merge_windows([[], [1, 2, 3], []], W3) == [1, 2, 3]
    assert merge_windows([[], [], []], W3) == []
    assert merge_windows([], []) == []
    # Windows 1 and 3 do not overlap in the audio, so nothing is trimmed across the silent middle one.
    assert merge_windows([[1, 2, 3], [], [2, 3, 4]], W3) == [1, 2, 3, 2, 3, 4]


def test_merge_next_window_inside_the_overlap() -> None:
    # A short last window whose tokens all fall inside the overlap adds nothing new.
    assert merge_windows([[1, 2, 3, 4, 5], [3, 4, 5]], W3[:2]) == [1, 2, 3, 4, 5]


def test_merge_aligns_within_the_previous_windows_span() -> None:
    # Window 2 kept only [8, 9] of its tokens, but its whole decoded span [6, 7, 8, 9] may overlap window 3.
    assert merge_windows([[4, 5, 6, 7, 8], [6, 7, 8, 9], [6, 7, 8, 9, 10]], W3) == [4, 5, 6, 7, 8, 9, 10]
    # Window 3's head matches only tokens from before window 2's span, so it is no overlap and nothing is cut.
    merged = merge_windows([[1, 2, 3, 4, 5, 6], [4, 5, 6, 7], [2, 3, 4, 5, 6, 7, 8]], W3)
    assert merged == [1, 2, 3, 4, 5, 6, 7, 2, 3, 4, 5, 6, 7, 8]


def test_merge_needs_one_token_list_per_window() -> None:
    with pytest.raises(ValueError, match="2 token lists for 3 windows"):
        merge_windows([[1], [2]], W3)


def test_segments_say_which_window_each_stretch_came_from() -> None:
    words = list(range(100, 160))
    segments = merge_segments([words[:24], words[16:44], words[36:]], W3)
    assert [w for w, _ in segments] == [0, 1, 2]
    assert [t for _, run in segments for t in run] == words
    # The seams sit in the middle of each 8-token overlap.
    assert [len(run) for _, run in segments] == [20, 20, 20]


def test_segments_skip_empty_windows_and_follow_a_seam_into_an_older_window() -> None:
    assert merge_segments([[], [1, 2, 3], []], W3) == [(1, [1, 2, 3])]
    # The last window's overlap search reaches past the middle window's short output into the first
    # window's tokens: the first window keeps what precedes the seam, the last window the rest.
    segments = merge_segments([[1, 2, 3, 4, 5, 6], [4, 5, 6, 7], [2, 3, 4, 5, 6, 7, 8]], W3)
    assert [t for _, run in segments for t in run] == merge_windows(
        [[1, 2, 3, 4, 5, 6], [4, 5, 6, 7], [2, 3, 4, 5, 6, 7, 8]], W3
    )
    assert [w for w, _ in segments] == sorted({w for w, _ in segments})
