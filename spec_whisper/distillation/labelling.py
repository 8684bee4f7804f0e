"""Labelling: encoder states, the main model's greedy transcripts and its top-k probabilities."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..engine import SpeculativeWhisper
from ..logit_filters import Positions, apply_filters
from ..types import DecodingOptions
from .config import DistilConfig, _digest
from .speech import Clip

# ----------------------------------------------------------------------------------------------
# Labelling: encoder states, the main model's greedy transcript and its top-k probabilities.


@dataclass
class LabelledSet:
    clips: list[dict]  # key, language, source, view, heldout
    states: Tensor  # [N, frames, d_model] float16, the main encoder's output
    inputs: list[Tensor]  # prompt + greedy tokens; targets are inputs[prompt:] + end-of-text
    prompt_lens: list[int]
    top_p: list[Tensor]  # [targets, k] float16 teacher probabilities
    top_i: list[Tensor]  # [targets, k] int32 token ids

    def subset(self, rows: Iterable[int]) -> LabelledSet:
        rows = list(rows)
        return LabelledSet(
            [self.clips[i] for i in rows],
            self.states[rows],
            [self.inputs[i] for i in rows],
            [self.prompt_lens[i] for i in rows],
            [self.top_p[i] for i in rows],
            [self.top_i[i] for i in rows],
        )

    @staticmethod
    def join(parts: list[LabelledSet]) -> LabelledSet:
        if not parts:
            return LabelledSet([], torch.empty(0), [], [], [], [])
        lists = [[x for p in parts for x in getattr(p, name)] for name in ("clips", "inputs", "prompt_lens")]
        tops = [[x for p in parts for x in getattr(p, name)] for name in ("top_p", "top_i")]
        return LabelledSet(lists[0], torch.cat([p.states for p in parts]), lists[1], lists[2], *tops)


def _label_batch(engine: SpeculativeWhisper, clips: list[Clip], config: DistilConfig) -> LabelledSet:
    pcm = [c.load() for c in clips]
    encoded = engine.encode(engine.log_mel(pcm))
    states = encoded.main
    limit = config.max_new_tokens
    options = [DecodingOptions(c.language, speculative=False, max_new_tokens=limit) for c in clips]
    results = engine.decode(encoded, options)
    end = engine.tokens.end_of_text
    kept = LabelledSet([], states[:0].half(), [], [], [], [])
    rows = []
    for i, (clip, result) in enumerate(zip(clips, results, strict=True)):
        ended = len(result.tokens) < config.max_new_tokens
        if config.require_end and (not ended or not result.tokens):
            continue  # repetition loop (or nothing said): not the behaviour to imitate
        prompt = engine.tokens.prompt(clip.language, "transcribe")
        kept.inputs.append(torch.tensor(prompt + result.tokens))
        kept.prompt_lens.append(len(prompt))
        kept.clips.append({k: v for k, v in vars(clip).items() if k != "load"})
        rows.append(i)
    if not rows:
        return kept
    kept.states = states[rows]
    # Teacher forcing over the whole transcript in one pass: the probabilities greedy decoding saw.
    width = max(len(x) for x in kept.inputs)
    batch = torch.full((len(rows), width), end)
    for r, x in enumerate(kept.inputs):
        batch[r, : len(x)] = x
    with torch.inference_mode():
        cache = engine.main.new_cache(kept.states)
        logits = engine.main.forward(batch, torch.zeros(len(rows), dtype=torch.long), cache)
    for r, x in enumerate(kept.inputs):
        p = kept.prompt_lens[r]
        row = logits[r, p - 1 : len(x)].clone()[None]
        apply_filters(engine.filters, row, Positions.teacher_forced(x[None], p, row.shape[1]))
        probs = row[0].float().softmax(-1)
        top_p, top_i = probs.topk(config.top_k, dim=-1)
        kept.top_p.append(top_p.half())
        kept.top_i.append(top_i.int())
    kept.states = kept.states.half()
    return kept


def label_clips(
    engine: SpeculativeWhisper,
    clips: list[Clip],
    config: DistilConfig,
    cache_dir: Path | None,
    batch: int = 8,
    desc: str = "labelling",
) -> LabelledSet:
    """Label `clips` in shards of `batch`; each shard is cached, so a rerun only labels what is missing."""
    parts = []
    bar = tqdm(range(0, len(clips), batch), desc=desc, unit="shard", leave=False)
    for start in bar:
        shard = clips[start : start + batch]
        path = None
        if cache_dir is not None:
            name = _digest([config.data_key(), [c.key for c in shard]])
            path = cache_dir / f"shard-{name}.pt"
        if path is not None and path.is_file():
            parts.append(LabelledSet(**torch.load(path, weights_only=False)))
            continue
        part = _label_batch(engine, shard, config)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(vars(part), path.with_suffix(".tmp"))
            path.with_suffix(".tmp").rename(path)
        parts.append(part)
    return LabelledSet.join(parts)
