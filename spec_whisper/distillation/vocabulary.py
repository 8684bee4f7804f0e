"""A language's everyday vocabulary as Whisper tokens, for the assistant's per-language shortlists.

A few hours of transcripts miss most of a language's common words: on held-out LibriSpeech, 6.7% of
the main model's tokens fell outside a 6k shortlist built from them and from Whisper's lowest BPE ids,
and they were words such as " noise", " crowd" and " settled". Word frequencies measured over large
corpora (the `wordfreq` package) rank those words, and the tokens Whisper writes them with, by how
often running text uses them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

__all__ = ["single_token_spellings", "word_token_order"]

# Whisper writes a word after a space, and capitalised at the start of a sentence (about one word in
# fifteen in prose) or as a name; the capitalised form is counted at this share of the word's use.
CAPITALISED_SHARE = 0.1


def single_token_spellings(decode: Callable[[list[int]], str], text_tokens: int) -> dict[str, int]:
    """The text each token spells on its own (the lowest id where two spell the same), for the ids
    below `text_tokens` (the rest are special): one table per tokenizer, whatever the language."""
    spellings: dict[str, int] = {}
    for token in range(text_tokens):
        spellings.setdefault(decode([token]), token)
    return spellings


def word_token_order(
    single: dict[str, int],
    encode: Callable[[str], list[int]],
    text_tokens: int,
    language: str,
    words: int = 30_000,
) -> list[int]:
    """Token ids by how often `language`'s text uses them, most frequent first; empty when wordfreq
    (the `offline` extra) is not installed or does not know the language. A word that one token
    spells (`single`, from `single_token_spellings`) is counted on that token whatever `encode` makes
    of it (a tokenizer that lost a merge, as the packaged whisper-base's did before
    `ct2_convert.restore_lost_merges`, splits " the" in two); other words on the tokens `encode`
    gives them. `text_tokens`: ids below it are text, the rest special."""
    try:
        import wordfreq

        ranked = wordfreq.top_n_list(language, words)
    except (ImportError, LookupError):
        return []
    weight: Counter[int] = Counter()
    for word in ranked:
        frequency = wordfreq.word_frequency(word, language)
        for spelling, share in ((" " + word, 1.0), (" " + word[:1].upper() + word[1:], CAPITALISED_SHARE)):
            whole = single.get(spelling)
            for token in [whole] if whole is not None else encode(spelling):
                if token < text_tokens:
                    weight[token] += frequency * share
    return [token for token, _ in sorted(weight.items(), key=lambda kv: (-kv[1], kv[0]))]
