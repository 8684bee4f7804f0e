"""The converter restores BPE merges that a published tokenizer.json lost."""

from __future__ import annotations

import copy

import pytest

from spec_whisper.ct2_convert import restore_lost_merges


def _tokenizer(merges: list[str]) -> dict:
    # Bytes 0..255 ("a", "b", "c" among them), then merge r makes token 256 + r.
    vocab = {chr(0x100 + i): i for i in range(256)}
    vocab.update({"a": 97, "b": 98, "c": 99})
    vocab.update({"ab": 256, "bc": 257, "abc": 258, "ca": 259})
    return {"model": {"vocab": vocab, "merges": merges}, "added_tokens": [{"content": "<|end|>", "id": 260}]}


def test_a_lost_two_symbol_merge_is_put_back_at_its_rank() -> None:
    whole = ["a b", "b c", "ab c", "c a"]
    for lost in (0, 1, 3):
        tok = _tokenizer(whole[:lost] + whole[lost + 1 :])
        assert restore_lost_merges(tok) == [whole[lost]]
        assert tok["model"]["merges"] == whole
        assert restore_lost_merges(tok) == []  # nothing more to restore


def test_merges_stored_as_pairs_stay_pairs() -> None:
    tok = _tokenizer([["b", "c"], ["ab", "c"], ["c", "a"]])
    assert restore_lost_merges(tok) == ["a b"]
    assert tok["model"]["merges"] == [["a", "b"], ["b", "c"], ["ab", "c"], ["c", "a"]]


def test_a_lost_longer_merge_cannot_be_guessed() -> None:
    tok = _tokenizer(["a b", "b c", "c a"])  # "abc" could be "ab c" or "a bc"
    with pytest.raises(ValueError, match="'abc'"):
        restore_lost_merges(tok)


def test_merges_that_do_not_follow_the_ids_are_left_alone() -> None:
    tok = _tokenizer(["b c", "a b", "c a"])
    before = copy.deepcopy(tok)
    assert restore_lost_merges(tok) == []
    assert tok == before
