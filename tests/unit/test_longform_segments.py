"""Segments and seeking of long-form decoding, against transformers' own `_retrieve_segment`."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from spec_whisper.longform import Segment, split_segments

STAMP = 50364  # <|0.00|> in multilingual Whisper
FRAMES = 3000


def _window(rng: random.Random) -> list[int]:
    """A window's tokens as Whisper writes them with timestamps: segments of text between pairs of
    ascending timestamps, ending in a pair, a lone timestamp, or cut off in the middle of text."""
    tokens, step = [], 0
    for _ in range(rng.randint(1, 5)):
        step += rng.randint(0, 40)
        tokens.append(STAMP + step)
        tokens += [rng.randrange(0, 50257) for _ in range(rng.randint(1, 8))]
        step += rng.randint(1, 300)
        tokens.append(STAMP + min(step, 1500))
    ending = rng.choice(["pair", "lone", "cut"])
    if ending == "lone":
        tokens.pop()
        tokens += [rng.randrange(0, 50257), STAMP + min(step + 5, 1500)]
    elif ending == "cut":
        tokens += [STAMP + min(step, 1500), rng.randrange(0, 50257)]
    return tokens


def _theirs(tokens: list[int], offset_s: float, frames: int) -> tuple[list[Segment], int]:
    segments, advance = WhisperForConditionalGeneration._retrieve_segment(
        seek_sequence=torch.tensor(tokens),
        seek_outputs=[None],
        time_offset=torch.tensor([offset_s], dtype=torch.float64),
        timestamp_begin=STAMP,
        seek_num_frames=torch.tensor([frames]),
        time_precision=0.02,
        time_precision_features=0.01,
        input_stride=2,
        prev_idx=0,
        idx=0,
        return_token_timestamps=False,
        decoder_input_ids=torch.zeros(1, 3, dtype=torch.long),
    )
    return [Segment(float(s["start"]), float(s["end"]), s["tokens"].tolist()) for s in segments], int(advance)


@pytest.mark.parametrize("seed", range(200))
def test_segments_and_seek_are_transformers(seed: int) -> None:
    rng = random.Random(seed)
    tokens = _window(rng) if seed % 10 else [rng.randrange(0, 50257) for _ in range(6)]  # no timestamps
    offset = rng.randrange(0, 20000) * 0.01
    frames = FRAMES if seed % 3 else rng.randint(100, FRAMES)  # a last, shorter window
    ours, advance = split_segments(tokens, STAMP, offset, frames)
    theirs, their_advance = _theirs(tokens, offset, frames)
    assert advance == their_advance
    assert [s.tokens for s in ours] == [s.tokens for s in theirs]
    assert [s.start for s in ours] == pytest.approx([s.start for s in theirs], abs=1e-9)
    assert [s.end for s in ours] == pytest.approx([s.end for s in theirs], abs=1e-9)
    joined = [t for s in ours for t in s.tokens]  # a cut-off last segment is left to the next window
    assert joined == tokens[: len(joined)]


def test_a_window_that_ends_on_a_lone_timestamp_is_read_through() -> None:
    tokens = [STAMP, 1, 2, STAMP + 100, STAMP + 100, 3, STAMP + 250]
    segments, advance = split_segments(tokens, STAMP, 60.0, FRAMES)
    assert advance == FRAMES
    assert [s.start for s in segments] == pytest.approx([60.0, 62.0])
    assert [s.end for s in segments] == pytest.approx([62.0, 65.0])


def test_a_window_cut_off_mid_segment_resumes_at_its_last_pair() -> None:
    tokens = [STAMP, 1, 2, STAMP + 100, STAMP + 100, 3, 4]
    segments, advance = split_segments(tokens, STAMP, 0.0, FRAMES)
    assert advance == 200  # two frames per 0.02 s step: the next window starts at 2.00 s
    assert [s.tokens for s in segments] == [[STAMP, 1, 2, STAMP + 100, STAMP + 100]]  # 3, 4: next window's
    assert segments[0].end == pytest.approx(2.0)
