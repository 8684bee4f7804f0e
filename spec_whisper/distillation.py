"""Distil a small decoder-only assistant from a main Whisper model, on this machine's CPU.

The assistant is a `WhisperForCausalLM` with a few of the main decoder's layers (the first and the
last by default) over the main model's frozen token and position embeddings; it reads the main
encoder's states, so it has no encoder of its own. It learns to imitate the main model: soft
cross-entropy to the main model's top-k token probabilities (a truncated KL divergence) plus hard
cross-entropy on the main model's own greedy transcripts (pseudo-labels), on

- real speech split by speaker (LibriSpeech) or by file (FLEURS): held-out clips are never trained on;
  the training recordings are used clip by clip, packed into 30 s windows, and packed at other speeds;
- synthetic speech from `espeak-ng` (several voices, speeds and pitches, en/de/fr/es/pt) over texts
  whose licence allows it: sentences written for this project, the public-domain King James Bible
  (Debian's `bible-kjv`, when installed) and the training clips' own transcripts.

Labelling (encoder states, greedy transcripts, teacher top-k) is the slow part; it is cached on disk
per shard, so an interrupted run continues where it stopped. Training checkpoints every N steps and
resumes; the batch order is a function of the seed and the step, so a resumed run equals an
uninterrupted one. The output head is restricted during training to the most frequent tokens of the
main model's transcripts (`shortlist.json`, saved beside the weights), which is what the engine uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm
from transformers import WhisperForCausalLM, WhisperForConditionalGeneration

from .audio import N_SAMPLES, SAMPLE_RATE, decode_audio, prepare_pcm
from .chunking import split_windows
from .engine import SpeculativeWhisper
from .loading import SHORTLIST_FILE
from .logit_filters import apply_filters
from .types import DecodingOptions

__all__ = [
    "Clip",
    "DistilConfig",
    "LabelledSet",
    "added_parameters",
    "build_shortlist",
    "default_clips",
    "default_threads",
    "distil",
    "ensure_assistant",
    "evaluate_acceptance",
    "init_assistant",
    "label_clips",
    "labelled_data",
    "real_clips",
    "synthetic_clips",
    "token_order",
    "train",
]

SETTINGS_FILE = "distillation.json"
CHECKPOINT_FILE = "checkpoint.pt"
DEFAULT_SPEECH_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech"


@dataclass(frozen=True)
class DistilConfig:
    # Main decoder layers copied into the assistant (Python indices: -1 is the last).
    layers: tuple[int, ...] = (0, -1)
    # Hidden units kept in each copied feed-forward block; None keeps as many as fit `max_added`.
    ffn_dim: int | None = None
    # The assistant's own parameters (its layers and final norm; embeddings are the main model's)
    # may add at most this share to the main model's.
    max_added: float = 0.10
    steps: int = 500
    batch_size: int = 8
    lr: float = 5e-4
    warmup_steps: int = 20
    weight_decay: float = 0.01
    # Teacher probabilities kept per position for the soft loss; loss = soft + hard_weight * hard.
    top_k: int = 16
    hard_weight: float = 0.5
    # Tokens the head is trained over (the most frequent of the training transcripts first) and
    # the shortlist saved for the engine (a prefix of the same order).
    train_vocab: int = 8192
    shortlist: int = 4096
    seed: int = 0
    # Wall-clock cap on training; a run stopped by it says so in its model card.
    max_train_s: float = 900.0
    # Labels: windows the main model does not end within this many tokens are dropped (repetition loops).
    max_new_tokens: int = 224
    require_end: bool = True
    # Held out for evaluation, never trained on: the last LibriSpeech speakers and FLEURS files.
    heldout_speakers: int = 2
    heldout_fleurs: int = 4
    # Real training recordings are also packed at these speeds (resampled, as `sox speed` does).
    speeds: tuple[float, ...] = (0.9, 1.1)
    # Synthetic 30 s windows per language.
    synthetic: tuple[tuple[str, int], ...] = (("en", 110), ("de", 16), ("fr", 16), ("es", 16), ("pt", 16))
    # Caps for quick runs: real training windows and held-out clips (None: all).
    max_real_windows: int | None = None
    max_heldout: int | None = None

    @classmethod
    def quick(cls, **overrides) -> DistilConfig:
        """A couple of minutes in all on two cores: a handful of windows and steps, for CI."""
        settings = dict(
            steps=40,
            max_train_s=120.0,
            max_new_tokens=160,
            speeds=(),
            synthetic=(("en", 4),),
            max_real_windows=8,
            max_heldout=4,
            train_vocab=4096,
            shortlist=2048,
        )
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def from_dict(cls, settings: dict) -> DistilConfig:
        """The inverse of `dataclasses.asdict` through JSON, which turns tuples into lists."""

        def tuples(value: object) -> object:
            return tuple(tuples(v) for v in value) if isinstance(value, list) else value

        return cls(**{k: tuples(v) for k, v in settings.items()})

    def key(self) -> str:
        """Everything the result depends on (the wall-clock cap only when it cuts a run short)."""
        settings = dataclasses.asdict(self)
        settings.pop("max_train_s")
        return _digest(settings)

    def data_key(self) -> str:
        names = ("max_new_tokens", "require_end", "heldout_speakers", "heldout_fleurs", "speeds", "seed")
        names += ("synthetic", "max_real_windows", "max_heldout", "top_k")
        return _digest({n: getattr(self, n) for n in names})


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Audio: real clips split by speaker/file, synthetic speech from espeak-ng.


@dataclass
class Clip:
    key: str
    language: str
    # "librispeech", "fleurs", "librivox", "longform" or "espeak"; `view` says how it was cut.
    source: str
    heldout: bool
    load: Callable[[], np.ndarray] = field(repr=False)
    view: str = "clip"


def _pack(pieces: list[np.ndarray], gap_s: float = 0.5) -> list[np.ndarray]:
    """Consecutive recordings joined with short silences into windows of at most 30 s;
    a recording longer than a window is cut into 30 s windows of its own."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    windows, current = [], []
    for pcm in pieces:
        if len(pcm) > N_SAMPLES:
            windows += [pcm[w.start : w.end] for w in split_windows(pcm, 30.0, 0.0)]
            continue
        if current and sum(map(len, current)) + len(gap) + len(pcm) > N_SAMPLES:
            windows.append(np.concatenate(current))
            current = []
        current += [gap, pcm] if current else [pcm]
    if current:
        windows.append(np.concatenate(current))
    return windows


def _speed(pcm: np.ndarray, factor: float) -> np.ndarray:
    return soxr.resample(pcm, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32)


def real_clips(speech_dir: Path, config: DistilConfig) -> tuple[list[Clip], list[Clip]]:
    """Training windows and held-out clips from the shared speech folder, split by speaker/file."""
    lines = (speech_dir / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    manifest = [json.loads(line) for line in lines if line.strip()]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in manifest:
        corpus = row["path"].split("/")[0]
        source = {"librispeech_test_other": "librispeech"}.get(corpus, corpus)
        # Speakers for LibriSpeech; for FLEURS every file is its own group (speakers are unknown).
        group = row["path"].split("/")[1] if source == "librispeech" else row["path"]
        groups.setdefault((source, row["language"], group), []).append(row)
    speakers = sorted({g for s, _, g in groups if s == "librispeech"}, key=int)
    heldout_speakers = set(speakers[len(speakers) - config.heldout_speakers :])
    fleurs = {}
    for lang in sorted({lang for s, lang, _ in groups if s == "fleurs"}):
        files = sorted(g for s, la, g in groups if s == "fleurs" and la == lang)
        fleurs[lang] = set(files[len(files) - config.heldout_fleurs :])

    def loader(path: str) -> Callable[[], np.ndarray]:
        return lambda: decode_audio(speech_dir / path)

    train: list[Clip] = []
    heldout: list[Clip] = []
    packed: dict[tuple[str, str], list[dict]] = {}
    for (source, lang, group), rows in sorted(groups.items()):
        held = group in heldout_speakers or group in fleurs.get(lang, set())
        for row in rows:
            key = row.get("id") or Path(row["path"]).stem
            if held:
                heldout.append(Clip(key, lang, source, True, loader(row["path"])))
            elif row["duration_s"] <= 30:
                train.append(Clip(key, lang, source, False, loader(row["path"])))
        if not held:
            packed.setdefault((source, group if source == "librispeech" else lang), []).extend(rows)
    for (source, group), rows in packed.items():
        lang = rows[0]["language"]
        paths = [r["path"] for r in rows]
        # Speed-perturbed copies only of the corpora evaluated on: their speakers matter most.
        speeds = (1.0, *config.speeds) if source in ("librispeech", "fleurs") else (1.0,)
        for speed in speeds:
            n = len(_pack_paths(speech_dir, paths, speed))
            for i in range(n):
                key = f"{source}-{group}-x{speed:g}-{i}".replace("/", "_")
                view = "packed" if speed == 1.0 else f"packed x{speed:g}"
                load = _packed_loader(speech_dir, paths, speed, i)
                train.append(Clip(key, lang, source, False, load, view))
    if config.max_real_windows is not None:
        # Quick runs: whole packed windows first (the most speech per encoder pass).
        train = sorted(train, key=lambda c: (c.view == "clip", c.source != "librispeech", c.key))
        train = train[: config.max_real_windows]
    if config.max_heldout is not None:
        heldout = [c for c in heldout if c.language == "en"][: config.max_heldout]
    return train, heldout


_PACK_CACHE: dict[tuple, list[np.ndarray]] = {}


def _pack_paths(speech_dir: Path, paths: list[str], speed: float) -> list[np.ndarray]:
    key = (str(speech_dir), tuple(paths), speed)
    if key not in _PACK_CACHE:
        pcm = [decode_audio(speech_dir / p) for p in paths]
        _PACK_CACHE[key] = _pack([_speed(x, speed) if speed != 1.0 else x for x in pcm])
    return _PACK_CACHE[key]


def _packed_loader(speech_dir: Path, paths: list[str], speed: float, i: int) -> Callable[[], np.ndarray]:
    return lambda: _pack_paths(speech_dir, paths, speed)[i]


# Sentences written for this project (no outside source), so any use is allowed.
OWN_SENTENCES = {
    "en": [
        "The rain had stopped by the time we reached the old mill at the edge of the village.",
        "She folded the letter twice, put it in her pocket, and said nothing more about it.",
        "Nobody in the house could remember when the clock in the hall had last been wound.",
        "He told me that the road over the hills was shorter, but that it was not safe in winter.",
        "We waited on the platform for nearly an hour before the evening train came in.",
        "If you had seen the harbour that morning, you would have understood why they stayed.",
        "The doctor looked at the boy for a long time and then asked for a glass of water.",
        "There were seven chairs around the table, and one of them was always left empty.",
        "My grandfather kept bees behind the orchard and sold the honey at the Saturday market.",
        "I do not think the captain ever forgave himself for what happened on that voyage.",
        "Her brother came home at last, thinner than before, with a beard and a quiet manner.",
        "The lamp flickered, and for a moment the whole room seemed to lean towards the window.",
        "They argued about the price of wheat until the fire burned low and the children slept.",
        "Walk straight on past the church, turn left at the bridge, and you will see the inn.",
        "It was the kind of silence that comes only after a long and difficult conversation.",
        "The teacher wrote three questions on the board and asked us to answer them in ink.",
        "A small grey cat followed us all the way from the station to the door of the hotel.",
        "Perhaps, said the old woman, you will understand these things when you are older.",
        "The soldiers marched through the town at dawn, and by noon the square was empty again.",
        "Every summer the river rose a little higher, and every summer the farmers complained.",
        "He opened the book in the middle, read a single line, and closed it with a sigh.",
        "What would you have done, she asked, if the ship had not turned back in time?",
        "The garden was full of roses that nobody had planted and nobody dared to cut.",
        "Thirty years later I found the same stone on the beach, or one very much like it.",
        "The merchant counted his coins twice and still believed that someone had cheated him.",
        "Light a candle in the kitchen, and bring me the blue box from the shelf upstairs.",
        "Most of the villagers had never seen the sea, though it lay only a day's walk away.",
        "The wind carried the sound of the bells across the valley to the farms on the other side.",
    ],
    "de": [
        "Am Morgen lag dichter Nebel über dem Fluss, und die Fischer blieben lange am Ufer.",
        "Meine Großmutter erzählte uns jeden Abend eine Geschichte aus ihrer Kindheit.",
        "Der Zug nach Hamburg hatte wieder einmal eine halbe Stunde Verspätung.",
        "Wir gingen durch den Wald, bis wir zu einer kleinen Hütte am Rand der Wiese kamen.",
        "Er wusste nicht, ob er die Wahrheit sagen oder lieber schweigen sollte.",
        "Im Winter ist das Dorf still, aber im Sommer kommen viele Gäste aus der Stadt.",
        "Die Lehrerin schrieb das Datum an die Tafel und bat die Kinder um Ruhe.",
        "Nach dem Essen saßen alle noch lange am Tisch und sprachen über die Reise.",
        "Das alte Haus am Marktplatz gehört seit drei Generationen derselben Familie.",
        "Kannst du mir sagen, wie ich am schnellsten zum Bahnhof komme?",
        "Der Regen prasselte gegen die Fenster, während wir auf den Arzt warteten.",
        "Sie hat das Buch in einer einzigen Nacht gelesen und am Morgen sofort weiterempfohlen.",
        "Auf dem Berg war die Luft klar, und man konnte bis zu den Seen hinuntersehen.",
        "Im Herbst sammelten die Kinder Kastanien und brachten sie in großen Körben nach Hause.",
    ],
    "fr": [
        "Le matin, la brume couvrait encore la rivière et les pêcheurs attendaient sur la rive.",
        "Ma grand-mère nous racontait chaque soir une histoire de son enfance.",
        "Le train pour Lyon avait encore une demi-heure de retard ce jour-là.",
        "Nous avons marché dans la forêt jusqu'à une petite cabane au bord du pré.",
        "Il ne savait pas s'il devait dire la vérité ou se taire encore un peu.",
        "En hiver le village est calme, mais en été beaucoup de visiteurs arrivent de la ville.",
        "La maîtresse écrivit la date au tableau et demanda aux enfants de se taire.",
        "Après le repas, tout le monde resta longtemps à table pour parler du voyage.",
        "La vieille maison sur la place appartient à la même famille depuis trois générations.",
        "Pouvez-vous me dire comment aller à la gare le plus vite possible ?",
        "La pluie frappait les vitres pendant que nous attendions le médecin.",
        "Elle a lu le livre en une seule nuit et l'a conseillé à tous ses amis le lendemain.",
        "Sur la montagne l'air était pur, et l'on voyait les lacs tout en bas.",
        "En automne les enfants ramassaient des châtaignes et les rapportaient dans de grands paniers.",
    ],
    "es": [
        "Por la mañana la niebla cubría el río y los pescadores esperaban en la orilla.",
        "Mi abuela nos contaba cada noche una historia de su infancia.",
        "El tren a Sevilla volvía a llevar media hora de retraso aquel día.",
        "Caminamos por el bosque hasta llegar a una pequeña cabaña junto al prado.",
        "No sabía si debía decir la verdad o quedarse callado un poco más.",
        "En invierno el pueblo está tranquilo, pero en verano llegan muchos visitantes de la ciudad.",
        "La maestra escribió la fecha en la pizarra y pidió silencio a los niños.",
        "Después de la comida todos se quedaron mucho tiempo a la mesa hablando del viaje.",
        "La vieja casa de la plaza pertenece a la misma familia desde hace tres generaciones.",
        "¿Puede decirme cómo llegar a la estación lo más rápido posible?",
        "La lluvia golpeaba las ventanas mientras esperábamos al médico.",
        "Leyó el libro en una sola noche y a la mañana siguiente se lo recomendó a todos.",
        "En la montaña el aire era limpio y se podían ver los lagos allá abajo.",
        "En otoño los niños recogían castañas y las llevaban a casa en grandes cestas.",
    ],
    "pt": [
        "De manhã a névoa cobria o rio e os pescadores esperavam na margem.",
        "A minha avó contava-nos todas as noites uma história da sua infância.",
        "O comboio para o Porto voltou a chegar com meia hora de atraso.",
        "Caminhámos pela floresta até chegarmos a uma pequena cabana junto ao prado.",
        "Ele não sabia se devia dizer a verdade ou ficar calado mais um pouco.",
        "No inverno a aldeia é tranquila, mas no verão chegam muitos visitantes da cidade.",
        "A professora escreveu a data no quadro e pediu silêncio às crianças.",
        "Depois do almoço todos ficaram muito tempo à mesa a falar da viagem.",
        "A velha casa da praça pertence à mesma família há três gerações.",
        "Pode dizer-me como chegar à estação o mais depressa possível?",
        "A chuva batia nas janelas enquanto esperávamos pelo médico.",
        "Ela leu o livro numa só noite e na manhã seguinte recomendou-o a todos.",
        "Na montanha o ar era limpo e viam-se os lagos lá em baixo.",
        "No outono as crianças apanhavam castanhas e levavam-nas para casa em grandes cestos.",
    ],
}
# Narrative books of the King James Bible (public domain; Debian's `bible-kjv`), read in order.
KJV_BOOKS = (("Genesis", 50), ("Ruth", 4), ("Esther", 10), ("Luke", 24), ("Acts", 28), ("Proverbs", 31))
ESPEAK_VOICES = {
    "en": ("en", "en-us", "en-gb-x-rp", "en-gb-scotland"),
    "de": ("de",),
    "fr": ("fr", "fr-be"),
    "es": ("es", "es-419"),
    "pt": ("pt", "pt-br"),
}
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt3", "Alex")


def _kjv_sentences(limit_chapters: int = 40) -> list[str]:
    if shutil.which("bible") is None:
        return []
    verses: list[str] = []
    for book, chapters in KJV_BOOKS:
        for chapter in range(1, min(chapters, limit_chapters) + 1):
            out = subprocess.run(
                ["bible", "-f", f"{book}{chapter}:1-200"], capture_output=True, text=True, check=False
            ).stdout
            # Lines look like "Ge1:1 In the beginning ...": drop the reference.
            verses += [line.split(" ", 1)[1] for line in out.splitlines() if " " in line]
    return verses


def synthesis_texts(train_clips_text: dict[str, list[str]]) -> dict[str, list[list[str]]]:
    """Sources per language, each a list of sentences in reading order: own sentences, KJV verses
    (English) and the training clips' transcripts (never the held-out ones). A window reads from
    one source, so the long Bible does not crowd out the others."""
    texts = {lang: [list(sentences)] for lang, sentences in OWN_SENTENCES.items()}
    if verses := _kjv_sentences():
        texts["en"].append(verses)
    for lang, lines in train_clips_text.items():
        # LibriSpeech transcripts are upper case, which espeak-ng may spell out letter by letter.
        texts.setdefault(lang, []).append([t.capitalize() if t.isupper() else t for t in lines])
    return texts


def _espeak(text: str, voice: str, speed: int, pitch: int, workdir: Path) -> np.ndarray:
    path = workdir / "tts.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    samples, rate = sf.read(path, dtype="float32")
    return prepare_pcm(samples, rate, max_seconds=None)


def _synthetic_window(
    sources: list[list[str]], language: str, seed: str, workdir: Path
) -> tuple[np.ndarray, dict[str, object]]:
    """About 27 s of consecutive sentences from a random place, in one random voice and speed."""
    rng = random.Random(seed)
    voice = f"{rng.choice(ESPEAK_VOICES[language])}+{rng.choice(ESPEAK_VARIANTS)}"
    speed, pitch = rng.randint(135, 200), rng.randint(25, 75)
    texts = rng.choice(sources)
    start = rng.randrange(len(texts))
    chosen, words = [], 0.0
    # espeak-ng keeps close to `speed` words a minute; leave room for sentence pauses.
    while words / speed * 60 < 24 and len(chosen) < len(texts):
        chosen.append(texts[(start + len(chosen)) % len(texts)])
        words += len(chosen[-1].split()) * 1.15
    while True:
        pcm = _espeak(" ".join(chosen), voice, speed, pitch, workdir)
        if len(pcm) <= N_SAMPLES - SAMPLE_RATE // 2 or len(chosen) == 1:
            break
        chosen.pop()
    return pcm[: N_SAMPLES - SAMPLE_RATE // 2], {"voice": voice, "speed": speed, "pitch": pitch}


def synthetic_clips(config: DistilConfig, texts: dict[str, list[list[str]]]) -> list[Clip]:
    """Windows spoken by espeak-ng; none (with a warning) where it is not installed."""
    if not config.synthetic:
        return []
    if shutil.which("espeak-ng") is None:
        warnings.warn(
            "espeak-ng not found (apt-get install espeak-ng): training on real speech only", stacklevel=2
        )
        return []
    clips = []
    # The texts on offer change the audio, so they are part of each window's cache key.
    sources = _digest({lang: [len(t) for t in s] for lang, s in texts.items()})[:6]
    for language, count in config.synthetic:
        for i in range(count):
            seed = f"{config.seed}-{language}-{i}"

            def load(lang: str = language, seed: str = seed) -> np.ndarray:
                with tempfile.TemporaryDirectory() as tmp:
                    return _synthetic_window(texts[lang], lang, seed, Path(tmp))[0]

            key = f"espeak-{language}-{i}-{sources}"
            clips.append(Clip(key, language, "espeak", False, load, "synthetic"))
    return clips


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
        apply_filters(engine.filters, row, torch.arange(row.shape[1])[None])
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


# ----------------------------------------------------------------------------------------------
# The assistant: copied layers (feed-forward blocks pruned to fit the budget), shortlist head.


def _block_parameters(d_model: int, ffn_dim: int) -> int:
    """Parameters of one Whisper decoder layer: self- and cross-attention (q, v, out with biases,
    k without), feed-forward block, three layer norms."""
    attention = 4 * d_model * d_model + 3 * d_model
    return 2 * attention + 2 * d_model * ffn_dim + ffn_dim + d_model + 3 * 2 * d_model


def added_parameters(assistant: WhisperForCausalLM) -> int:
    """The assistant's own parameters: its layers and final norm (embeddings are the main model's)."""
    decoder = assistant.model.decoder
    return sum(p.numel() for p in [*decoder.layers.parameters(), *decoder.layer_norm.parameters()])


def _ffn_within_budget(main: WhisperForConditionalGeneration, layers: int, share: float) -> int:
    config = main.config
    budget = share * sum(p.numel() for p in main.parameters()) - 2 * config.d_model
    full = config.decoder_ffn_dim
    if layers * _block_parameters(config.d_model, full) <= budget:
        return full
    fixed = _block_parameters(config.d_model, 0)
    per_unit = 2 * config.d_model + 1
    units = int((budget / layers - fixed) // per_unit)
    step = 128 if units >= 256 else 8  # whole SIMD/oneDNN blocks
    return max(step, units // step * step)


def init_assistant(
    main: WhisperForConditionalGeneration, layers: tuple[int, ...] = (0, -1), ffn_dim: int | None = None
) -> WhisperForCausalLM:
    """A decoder-only assistant: the main model's embeddings and final norm, copies of `layers`.

    A narrower feed-forward block keeps the hidden units whose input and output weights have
    the largest norms (their product bounds what a unit can contribute), in their original order.
    """
    config = main.config.to_dict()
    full = main.config.decoder_ffn_dim
    ffn = full if ffn_dim is None else ffn_dim
    config.update(decoder_layers=len(layers), decoder_ffn_dim=ffn, architectures=["WhisperForCausalLM"])
    assistant = WhisperForCausalLM(type(main.config).from_dict(config)).eval()
    source, target = main.model.decoder, assistant.model.decoder
    target.embed_tokens.load_state_dict(source.embed_tokens.state_dict())
    target.embed_positions.load_state_dict(source.embed_positions.state_dict())
    target.layer_norm.load_state_dict(source.layer_norm.state_dict())
    for slot, index in enumerate(layers):
        state = source.layers[index].state_dict()
        if ffn < full:
            fc1, fc2 = state["fc1.weight"], state["fc2.weight"]
            keep = (fc1.norm(dim=1) * fc2.norm(dim=0)).topk(ffn).indices.sort().values
            state["fc1.weight"], state["fc1.bias"] = fc1[keep], state["fc1.bias"][keep]
            state["fc2.weight"] = fc2[:, keep]
        target.layers[slot].load_state_dict(state)
    assistant.tie_weights()
    assistant.generation_config = main.generation_config
    return assistant


def build_shortlist(
    label_tokens: Iterable[Tensor], size: int, required: Iterable[int], excluded: Iterable[int], vocab: int
) -> list[int]:
    """Token ids in priority order: `required` (end-of-text, prompt tokens), then the transcripts'
    tokens by frequency, then the lowest remaining ids. Whisper's BPE ids follow merge order, which
    roughly follows the tokenizer's training frequencies, so they fill the list where our own
    transcripts are too few. Suppressed tokens are never generated, so they are left out."""
    counts = Counter(t for row in label_tokens for t in row.tolist())
    order = list(dict.fromkeys(required))
    skip = set(excluded) | set(order)
    order += [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if t not in skip]
    seen = set(order)
    for t in range(vocab):
        if len(order) >= size:
            break
        if t not in seen and t not in skip:
            order.append(t)
    return order[:size]


# ----------------------------------------------------------------------------------------------
# Training.


@dataclass
class _Targets:
    """Per window, positions `prompt - 1 ..` predict the transcript and end-of-text."""

    hard: list[Tensor]  # [targets] index into the training vocabulary, -1 when outside it
    soft_i: list[Tensor]  # [targets, k] same indexing
    soft_p: list[Tensor]  # [targets, k] renormalised over the entries inside the vocabulary


def _targets(data: LabelledSet, vocab: list[int], full_vocab: int, end: int) -> _Targets:
    index = torch.full((full_vocab,), -1, dtype=torch.long)
    index[torch.tensor(vocab)] = torch.arange(len(vocab))
    hard, soft_i, soft_p = [], [], []
    for i, x in enumerate(data.inputs):
        labels = torch.cat([x[data.prompt_lens[i] :], torch.tensor([end])])
        hard.append(index[labels])
        ids = index[data.top_i[i].long()]
        p = data.top_p[i].float() * (ids >= 0)
        soft_p.append(p / p.sum(-1, keepdim=True).clamp(min=1e-8))
        soft_i.append(ids.clamp(min=0))
    return _Targets(hard, soft_i, soft_p)


def _collate(data: LabelledSet, targets: _Targets, rows: list[int], end: int):
    width = max(len(data.inputs[r]) for r in rows)
    k = targets.soft_i[rows[0]].shape[1]
    inputs = torch.full((len(rows), width), end)
    hard = torch.full((len(rows), width), -2)  # -2: no target; -1: a target outside the vocabulary
    soft_i = torch.zeros((len(rows), width, k), dtype=torch.long)
    soft_p = torch.zeros((len(rows), width, k))
    for b, r in enumerate(rows):
        x, p = data.inputs[r], data.prompt_lens[r]
        inputs[b, : len(x)] = x
        hard[b, p - 1 : len(x)] = targets.hard[r]
        soft_i[b, p - 1 : len(x)] = targets.soft_i[r]
        soft_p[b, p - 1 : len(x)] = targets.soft_p[r]
    return inputs, data.states[rows].float(), hard, soft_i, soft_p


def _loss(
    assistant: WhisperForCausalLM, head: Tensor, batch, hard_weight: float
) -> tuple[Tensor, float, float]:
    """Soft + hard cross-entropy over the training vocabulary; also the share of positions where
    the assistant's first choice is the main model's token (what greedy drafting is scored on)."""
    inputs, states, hard, soft_i, soft_p = batch
    decoder = assistant.model.decoder
    hidden = decoder(input_ids=inputs, encoder_hidden_states=states, use_cache=False).last_hidden_state
    valid = hard > -2
    logp = F.linear(hidden[valid], head).log_softmax(-1)
    soft = -(soft_p[valid] * logp.gather(1, soft_i[valid])).sum(-1).mean()
    labels = hard[valid]
    inside = labels >= 0
    ce = F.nll_loss(logp[inside], labels[inside]) if inside.any() else logp.sum() * 0
    agree = (logp.argmax(-1) == labels).float().mean().item()
    return soft + hard_weight * ce, agree, int(valid.sum())


def _batch_rows(n: int, batch: int, seed: int, step: int) -> list[int]:
    """The rows of step `step`: epochs are seeded permutations, so resuming needs no RNG state."""
    per_epoch = max(1, n // batch)
    epoch, slot = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[slot * batch : (slot + 1) * batch].tolist() or order[:batch].tolist()


def _trainable(assistant: WhisperForCausalLM) -> list[torch.nn.Parameter]:
    decoder = assistant.model.decoder
    # The embeddings are the main model's and stay so (the output head is tied to them).
    decoder.embed_tokens.weight.requires_grad_(False)
    decoder.embed_positions.weight.requires_grad_(False)
    return [*decoder.layers.parameters(), *decoder.layer_norm.parameters()]


def train(
    assistant: WhisperForCausalLM,
    data: LabelledSet,
    vocab: list[int],
    config: DistilConfig,
    end_of_text: int,
    checkpoint: Path | None = None,
    evaluate: Callable[[WhisperForCausalLM], dict[str, float]] | None = None,
    eval_every: int = 50,
    checkpoint_every: int = 50,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Train in place for `config.steps` steps (resuming from `checkpoint` when it holds this run's
    state) and return the record: steps, seconds, losses and the evaluation curve. `stop_after`
    ends the run early at that step, as an interruption would (for tests)."""
    torch.manual_seed(config.seed)
    params = _trainable(assistant)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
        return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, config.steps))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    record = {"step": 0, "train_s": 0.0, "curve": [], "stopped_by_time": False, "key": config.key()}
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        if saved["record"]["key"] == config.key():
            assistant.load_state_dict(saved["model"], strict=False)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            record = saved["record"]
    head = assistant.model.decoder.embed_tokens.weight[torch.tensor(vocab)].detach()
    targets = _targets(data, vocab, assistant.config.vocab_size, end_of_text)
    assistant.train()
    bar = tqdm(total=config.steps, initial=record["step"], desc="training", disable=not progress)
    running = None
    postfix: dict[str, str] = {}
    while record["step"] < min(config.steps, stop_after or config.steps) and not record["stopped_by_time"]:
        began = time.perf_counter()
        rows = _batch_rows(len(data.inputs), config.batch_size, config.seed, record["step"])
        loss, agree, _ = _loss(
            assistant, head, _collate(data, targets, rows, end_of_text), config.hard_weight
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        record["step"] += 1
        record["train_s"] += time.perf_counter() - began
        running = (
            (loss.item(), agree)
            if running is None
            else tuple(0.9 * r + 0.1 * v for r, v in zip(running, (loss.item(), agree), strict=True))
        )
        record["last_loss"] = loss.item()
        # The wall-clock cap ends the run after this step, which is evaluated and saved as the last.
        record["stopped_by_time"] = record["train_s"] > config.max_train_s and record["step"] < config.steps
        done = record["step"] >= config.steps or record["stopped_by_time"]
        if evaluate is not None and (record["step"] % eval_every == 0 or done):
            assistant.eval()
            point = {"step": record["step"], "train_s": round(record["train_s"], 1)}
            point.update(train_acc=round(running[1], 4), **evaluate(assistant))
            record["curve"].append(point)
            postfix.update({k: f"{v:.1%}" for k, v in point.items() if k.startswith("heldout")})
            bar.write(json.dumps(point))
            assistant.train()
        bar.update(1)
        bar.set_postfix(loss=f"{running[0]:.3f}", acc=f"{running[1]:.1%}", **postfix)
        if checkpoint is not None and (record["step"] % checkpoint_every == 0 or done):
            trainable = {n: p for n, p in assistant.state_dict().items() if "embed" not in n}
            state = {
                "model": trainable,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "record": record,
            }
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
    bar.close()
    assistant.eval()
    return record


@torch.inference_mode()
def evaluate_acceptance(
    assistant: WhisperForCausalLM,
    data: LabelledSet,
    engine: SpeculativeWhisper,
    shortlists: dict[str, list[int] | None],
) -> dict[str, float]:
    """Share of the main model's tokens (end-of-text included) that the assistant's greedy choice
    matches given the same prefix, with its head cut to each shortlist (None: the full head)."""
    hits = dict.fromkeys(shortlists, 0)
    total = 0
    masks = {}
    for name, ids in shortlists.items():
        if ids is not None:
            masks[name] = torch.full((assistant.config.vocab_size,), -torch.inf)
            masks[name][torch.tensor(ids)] = 0.0
    weight = assistant.model.decoder.embed_tokens.weight
    for i in range(len(data.inputs)):
        x, p = data.inputs[i], data.prompt_lens[i]
        hidden = assistant.model.decoder(
            input_ids=x[None], encoder_hidden_states=data.states[i : i + 1].float(), use_cache=False
        ).last_hidden_state[:, p - 1 :]
        logits = F.linear(hidden, weight)
        apply_filters(engine.filters, logits, torch.arange(logits.shape[1])[None])
        labels = torch.cat([x[p:], torch.tensor([engine.tokens.end_of_text])])
        total += len(labels)
        for name in shortlists:
            scored = logits[0] + masks[name] if name in masks else logits[0]
            hits[name] += int((scored.argmax(-1) == labels).sum())
    return {name: hits[name] / max(1, total) for name in shortlists}


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
    main = engine.models.main
    ffn = config.ffn_dim or _ffn_within_budget(main, len(config.layers), config.max_added)
    assistant = init_assistant(main, config.layers, ffn)
    sizes = {f"{n // 1024}k": order[:n] for n in (1024, 2048, 4096, 8192) if n <= len(order)}
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
    )

    # 4. Measure and save.
    results = {"untrained_heldout_en": round(before["shortlist"], 4)}
    for lang in sorted({c["language"] for c in heldout.clips}):
        part = heldout.subset(i for i, c in enumerate(heldout.clips) if c["language"] == lang)
        scores = evaluate_acceptance(assistant, part, engine, sizes)
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
        # Frequency order of the trained head: any prefix is a shortlist (the benchmark tries several).
        "token_order": order[: config.train_vocab],
        "threads": torch.get_num_threads(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _save(assistant, order[: config.shortlist], summary, main_dir, work / "assistant")
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


def token_order(engine: SpeculativeWhisper, labelled: LabelledSet, size: int) -> list[int]:
    """The head's tokens in priority order: end-of-text and the prompt's tokens, then by frequency."""
    tokens = engine.tokens
    required = [tokens.end_of_text, *tokens.languages.values(), *tokens.tasks.values()]
    required += [tokens.start_of_transcript, tokens.no_timestamps]
    labels = [x[p:] for x, p in zip(labelled.inputs, labelled.prompt_lens, strict=True)]
    return build_shortlist(labels, size, required, tokens.suppress, engine.models.main.config.vocab_size)


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
    assistant: WhisperForCausalLM, shortlist: list[int], summary: dict, main_dir: Path, out: Path
) -> None:
    shutil.rmtree(out, ignore_errors=True)
    assistant.save_pretrained(out)
    shutil.copy(main_dir / "generation_config.json", out / "generation_config.json")
    (out / SHORTLIST_FILE).write_text(json.dumps({"token_ids": sorted(shortlist)}))
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
    synthetic = (
        "Synthetic speech: espeak-ng voices over sentences written for this project, the King James "
        "Bible (public domain, Debian `bible-kjv`, when installed) and the training clips' transcripts."
        if any(g.startswith("espeak/") for g in d["train"])
        else "No synthetic speech (espeak-ng was not installed)."
    )
    return f"""# Distilled assistant for `{summary["main"]}`

Decoder-only `WhisperForCausalLM` drafter for exact speculative decoding. It reads the main model's
encoder states and shares its token and position embeddings (the output head is tied to them);
`shortlist.json` restricts the head to {summary["shortlist_size"]} tokens when the engine loads it.

Made by `scripts/distil_assistant.py` (`spec_whisper.distillation`) on {summary["created"]}
(torch threads: {summary["threads"]}).

- Layers: the main decoder's layers {layers}; feed-forward width {summary["ffn_dim"]} of
  {summary["main_ffn_dim"]} (the units with the largest weight norms kept);
  {summary["added_parameters"]:,} own parameters = {share:.1%} of the main model's
  {summary["main_parameters"]:,}.
- Loss: soft cross-entropy to the main model's top-{s["top_k"]} probabilities + {s["hard_weight"]} x
  cross-entropy on its greedy transcripts, over the {s["train_vocab"]} most frequent tokens.
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


def default_threads() -> int:
    """Two threads on an idle 2-core machine; one while other processes hold the cores, because an
    OpenMP team whose second thread is descheduled waits at every barrier (measured here under a
    load of 9: a whisper-base decoder step took 754 ms with 2 threads, 68 ms with 1)."""
    return 1 if os.getloadavg()[0] > 1.0 else 2
