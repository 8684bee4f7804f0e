"""The whole distillation recipe, with its caches and its output directory."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from functools import partial
from pathlib import Path

import torch
from transformers import WhisperForCausalLM

from ..engine import SpeculativeWhisper
from ..loading import SHORTLIST_FILE
from .config import CHECKPOINT_FILE, DEFAULT_SPEECH_DIR, SETTINGS_FILE, DistilConfig, _digest, default_threads
from .labelling import LabelledSet, label_clips
from .speech import Clip, real_clips, synthesis_texts, synthetic_clips
from .student import _ffn_within_budget, added_parameters, build_shortlist, init_assistant
from .training import evaluate_acceptance, train
from .vocabulary import single_token_spellings, word_token_order

# ----------------------------------------------------------------------------------------------
# The whole recipe, with its caches and its output directory.


def _main_identity(main_dir: Path) -> str:
    files = sorted(main_dir.glob("*.json")) + sorted(main_dir.glob("*.safetensors"))
    return _digest([(f.name, f.stat().st_size) for f in files] + [(main_dir / "config.json").read_text()])


def _finished(out_dir: Path) -> dict | None:
    path = out_dir / SETTINGS_FILE
    if not path.is_file():
        return None
    settings = json.loads(path.read_text())
    return settings if settings.get("finished") else None


def distil(
    main_dir: str | Path,
    out_dir: str | Path,
    config: DistilConfig | None = None,
    speech_dir: str | Path | None = None,
    clips: tuple[list[Clip], list[Clip]] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Make `out_dir` a distilled assistant of `main_dir` (nothing to do if it already holds one
    made with the same settings). `clips` (training, held-out) replaces the default data."""
    config = config or DistilConfig()
    main_dir, out_dir = Path(main_dir), Path(out_dir)
    key = _digest([config.key(), _main_identity(main_dir), None if clips is None else "custom"])
    done = _finished(out_dir)
    if done is not None and done.get("key") == key and not force:
        return out_dir
    began = time.perf_counter()
    work = out_dir.with_name(out_dir.name + ".partial")
    engine = SpeculativeWhisper.load(main_dir)
    end = engine.tokens.end_of_text

    # 1. Data: held-out clips are labelled for evaluation only.
    train_clips, heldout_clips = clips or default_clips(config, speech_dir)
    labelled, heldout = labelled_data(engine, main_dir, config, train_clips, heldout_clips, cache_dir)
    labelling_s = time.perf_counter() - began
    if not labelled.inputs:
        raise RuntimeError("no training window kept: every transcript ran to the token cap")

    # 2. Shortlist and model.
    order = token_order(engine, labelled, max(config.train_vocab, config.shortlist))
    by_language = {}
    if config.language_shortlists:
        by_language = language_shortlists(engine, labelled, config.shortlist)
    main = engine.models.main
    ffn = config.ffn_dim or _ffn_within_budget(main, len(config.layers), config.max_added)
    assistant = init_assistant(main, config.layers, ffn)
    sizes = {
        f"{n / 1024:g}k": order[:n]
        for n in sorted({1024, 2048, 4096, config.shortlist, 8192})
        if n <= len(order)
    }
    sizes["full"] = None
    english = heldout.subset(i for i, c in enumerate(heldout.clips) if c["language"] == "en")
    before = evaluate_acceptance(assistant, english, engine, {"shortlist": order[: config.shortlist]})

    def evaluate(model: WhisperForCausalLM) -> dict[str, float]:
        scores = evaluate_acceptance(model, english, engine, {"heldout_en": order[: config.shortlist]})
        return {k: round(v, 4) for k, v in scores.items()}

    # 3. Train (resumable).
    record = train(
        assistant,
        labelled,
        order[: config.train_vocab],
        config,
        end,
        work / CHECKPOINT_FILE,
        evaluate if english.inputs else None,
        progress=progress,
        main=main,
    )

    # 4. Measure and save.
    results = {"untrained_heldout_en": round(before["shortlist"], 4)}
    for lang in sorted({c["language"] for c in heldout.clips}):
        part = heldout.subset(i for i, c in enumerate(heldout.clips) if c["language"] == lang)
        own = {PER_LANGUAGE: by_language.get(lang, order[: config.shortlist])} if by_language else {}
        scores = evaluate_acceptance(assistant, part, engine, {**sizes, **own})
        results[f"heldout_{lang}"] = {k: round(v, 4) for k, v in scores.items()}
    summary = {
        "finished": True,
        "key": key,
        "main": str(main_dir),
        "settings": dataclasses.asdict(config),
        "ffn_dim": ffn,
        "main_ffn_dim": main.config.decoder_ffn_dim,
        "added_parameters": added_parameters(assistant),
        "main_parameters": sum(p.numel() for p in main.parameters()),
        "data": _data_summary(labelled, heldout, len(train_clips), len(heldout_clips)),
        "labelling_s": round(labelling_s, 1),
        "training": {k: v for k, v in record.items() if k != "key"},
        "total_s": round(time.perf_counter() - began, 1),
        "acceptance": results,
        "shortlist_size": config.shortlist,
        "language_shortlists": sorted(by_language),
        # Frequency order of the trained head: any prefix is a shortlist (the benchmark tries several).
        "token_order": order[: config.train_vocab],
        "threads": torch.get_num_threads(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _save(assistant, order[: config.shortlist], by_language, summary, main_dir, work / "assistant")
    _replace_dir(work / "assistant", out_dir)
    shutil.rmtree(work, ignore_errors=True)
    return out_dir


def default_clips(
    config: DistilConfig, speech_dir: str | Path | None = None
) -> tuple[list[Clip], list[Clip]]:
    """Training windows (real and synthetic) and held-out clips of the shared speech folder."""
    speech = Path(speech_dir) if speech_dir is not None else DEFAULT_SPEECH_DIR
    train_clips, heldout_clips = real_clips(speech, config)
    texts = _training_texts(speech, {c.key for c in heldout_clips})
    return train_clips + synthetic_clips(config, synthesis_texts(texts)), heldout_clips


def labelled_data(
    engine: SpeculativeWhisper,
    main_dir: Path,
    config: DistilConfig,
    train_clips: list[Clip],
    heldout_clips: list[Clip],
    cache_dir: str | Path | None = None,
) -> tuple[LabelledSet, LabelledSet]:
    """Labelled training and held-out sets, from the on-disk cache where it has them."""
    if cache_dir is None:
        cache_dir = main_dir.parent / ".distil-cache" / f"{main_dir.name}-{_main_identity(main_dir)[:8]}"
    labelled = label_clips(engine, train_clips, config, Path(cache_dir), desc="labelling (training)")
    heldout = label_clips(engine, heldout_clips, config, Path(cache_dir), desc="labelling (held out)")
    return labelled, heldout


def _required(engine: SpeculativeWhisper) -> list[int]:
    tokens = engine.tokens
    prompt = [*tokens.languages.values(), *tokens.tasks.values(), tokens.start_of_transcript]
    return [tokens.end_of_text, *prompt, tokens.no_timestamps]


def _labels(labelled: LabelledSet, language: str | None = None) -> list[torch.Tensor]:
    return [
        x[p:]
        for x, p, clip in zip(labelled.inputs, labelled.prompt_lens, labelled.clips, strict=True)
        if language is None or clip["language"] == language
    ]


def token_order(engine: SpeculativeWhisper, labelled: LabelledSet, size: int) -> list[int]:
    """The head's tokens in priority order: end-of-text and the prompt's tokens, then by frequency."""
    vocab = engine.models.main.config.vocab_size
    return build_shortlist(_labels(labelled), size, _required(engine), engine.tokens.suppress, vocab)


# The acceptance column of each language's own shortlist (`language_shortlists`).
PER_LANGUAGE = "own language"


def language_shortlists(engine: SpeculativeWhisper, labelled: LabelledSet, size: int) -> dict[str, list[int]]:
    """A shortlist per language of the training windows: that language's transcripts alternating
    with its everyday vocabulary (`word_token_order`; Whisper's BPE ids where wordfreq lacks the
    language or the model lacks a tokenizer). The engine drafts a batch of one language with it."""
    vocab = engine.models.main.config.vocab_size
    required = _required(engine)
    tokenizer = engine.tokenizer
    text_tokens = engine.tokens.end_of_text
    if tokenizer is not None:
        single = single_token_spellings(tokenizer.decode, text_tokens)
        encode = partial(tokenizer.encode, add_special_tokens=False)
    shortlists = {}
    for language in sorted({clip["language"] for clip in labelled.clips}):
        general = None
        if tokenizer is not None:
            general = word_token_order(single, encode, text_tokens, language) or None
        labels = _labels(labelled, language)
        shortlists[language] = build_shortlist(labels, size, required, engine.tokens.suppress, vocab, general)
    return shortlists


def _training_texts(speech_dir: Path, heldout_keys: set[str]) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {}
    for line in (speech_dir / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        key = row.get("id") or Path(row["path"]).stem
        # The long-form item repeats clips' text; held-out transcripts never reach training.
        if key not in heldout_keys and row.get("text") and "longform" not in row["path"]:
            texts.setdefault(row["language"], []).append(row["text"])
    return texts


def _data_summary(labelled: LabelledSet, heldout: LabelledSet, offered: int, offered_heldout: int) -> dict:
    def count(data: LabelledSet) -> dict:
        groups: dict[str, dict[str, float]] = {}
        for c, x, p in zip(data.clips, data.inputs, data.prompt_lens, strict=True):
            g = groups.setdefault(f"{c['source']}/{c['language']}", {"windows": 0, "tokens": 0})
            g["windows"] += 1
            g["tokens"] += len(x) - p + 1
        return groups

    return {
        "train_windows": len(labelled.inputs),
        "train_dropped": offered - len(labelled.inputs),
        "heldout_windows": len(heldout.inputs),
        "heldout_dropped": offered_heldout - len(heldout.inputs),
        "train": count(labelled),
        "heldout": count(heldout),
        "heldout_keys": [c["key"] for c in heldout.clips],
    }


def _save(
    assistant: WhisperForCausalLM,
    shortlist: list[int],
    by_language: dict[str, list[int]],
    summary: dict,
    main_dir: Path,
    out: Path,
) -> None:
    shutil.rmtree(out, ignore_errors=True)
    assistant.save_pretrained(out)
    shutil.copy(main_dir / "generation_config.json", out / "generation_config.json")
    shortlists = {"token_ids": sorted(shortlist)}
    if by_language:
        shortlists["by_language"] = {lang: sorted(ids) for lang, ids in by_language.items()}
    (out / SHORTLIST_FILE).write_text(json.dumps(shortlists))
    (out / SETTINGS_FILE).write_text(json.dumps(summary, indent=1))
    (out / "README.md").write_text(model_card(summary))


def _replace_dir(new: Path, out: Path) -> None:
    """Swap `new` into `out` so a reader never sees a half-written assistant."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def model_card(summary: dict) -> str:
    s, t, d = summary["settings"], summary["training"], summary["data"]
    acc = summary["acceptance"]
    rows = "\n".join(
        f"| {name.removeprefix('heldout_')} | " + " | ".join(f"{v:.1%}" for v in scores.values()) + " |"
        for name, scores in acc.items()
        if isinstance(scores, dict)
    )
    header = next((list(v) for v in acc.values() if isinstance(v, dict)), [])
    train_rows = "\n".join(f"| {g} | {v['windows']} | {v['tokens']} |" for g, v in sorted(d["train"].items()))
    curve = "\n".join(
        f"| {p['step']} | {p['train_s']:.0f} | {p['train_acc']:.1%} | {p['heldout_en']:.1%} |"
        for p in t["curve"]
    )
    layers = ", ".join(str(i) for i in s["layers"])
    share = summary["added_parameters"] / summary["main_parameters"]
    stopped = " (stopped by the wall-clock cap)" if t.get("stopped_by_time") else ""
    hidden_weight = s.get("hidden_weight", 0.0)
    hidden = (
        f" + {hidden_weight:g} x the squared distance to the main decoder's last hidden states"
        if hidden_weight
        else ""
    )
    synthetic = (
        "Synthetic speech: espeak-ng voices over sentences written for this project, the King James "
        "Bible (public domain, Debian `bible-kjv`, when installed) and the training clips' transcripts."
        if any(g.startswith("espeak/") for g in d["train"])
        else "No synthetic speech (espeak-ng was not installed)."
    )
    cross = (
        "frozen at the copied main layers', so the engine reuses the main decoder's cross-attention "
        "cache instead of computing its own"
        if s.get("share_cross_attention")
        else "trained, so the engine computes the assistant's own cross-attention cache per request"
    )
    languages = summary.get("language_shortlists")
    languages = (
        f"; a batch of one language drafts from that language's own list ({', '.join(languages)}:"
        f' its transcripts and everyday words, column "{PER_LANGUAGE}" below)'
        if languages
        else ""
    )
    return f"""# Distilled assistant for `{summary["main"]}`

Decoder-only `WhisperForCausalLM` drafter for exact speculative decoding. It reads the main model's
encoder states and shares its token and position embeddings (the output head is tied to them);
`shortlist.json` restricts the head to {summary["shortlist_size"]} tokens when the engine loads it{languages}.

Made by `scripts/distil_assistant.py` (`spec_whisper.distillation`) on {summary["created"]}
(torch threads: {summary["threads"]}).

- Layers: the main decoder's layers {layers}; feed-forward width {summary["ffn_dim"]} of
  {summary["main_ffn_dim"]} (the units with the largest weight norms kept);
  {summary["added_parameters"]:,} own parameters = {share:.1%} of the main model's
  {summary["main_parameters"]:,}.
- Loss: soft cross-entropy to the main model's top-{s["top_k"]} probabilities + {s["hard_weight"]} x
  cross-entropy on its greedy transcripts, over the {s["train_vocab"]} most frequent tokens{hidden}.
- Cross-attention keys/values: {cross}.
- AdamW lr {s["lr"]}, batch {s["batch_size"]}, {t["step"]} steps{stopped}, seed {s["seed"]}, fp32.
- Time: labelling {summary["labelling_s"]:.0f} s, training {t["train_s"]:.0f} s,
  {summary["total_s"]:.0f} s in all.

## Data

{d["train_windows"]} training windows ({d["train_dropped"]} dropped: no end-of-text within
{s["max_new_tokens"]} tokens). Held out, never trained on: {d["heldout_windows"]} clips (the last
{s["heldout_speakers"]} LibriSpeech test-other speakers, the last {s["heldout_fleurs"]} FLEURS files
per language). {synthetic}

| source/language | windows | tokens |
|---|---|---|
{train_rows}

## Acceptance (held out)

Share of the main model's greedy tokens that the assistant's greedy choice matches, given the same
prefix, by head size. Untrained (copied layers): {acc["untrained_heldout_en"]:.1%} on English.

| language | {" | ".join(header)} |
|---|{"---|" * len(header)}
{rows}

## Training curve

| step | seconds | train acc | held-out en |
|---|---|---|---|
{curve}
"""


def ensure_assistant(main_dir: str | Path, out_dir: str | Path, quick: bool = False) -> Path:
    """Build the assistant unless `out_dir` already holds a finished one; a full assistant also
    serves a quick request."""
    config = DistilConfig.quick() if quick else DistilConfig()
    done = _finished(Path(out_dir))
    if done is not None and (quick or not done["settings"].get("max_real_windows")):
        return Path(out_dir)
    torch.set_num_threads(default_threads())
    return distil(main_dir, out_dir, config)
