"""Audio for distillation: real clips split by speaker/file, synthetic speech from espeak-ng."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..audio import N_SAMPLES, SAMPLE_RATE, decode_audio, prepare_pcm
from ..chunking import split_windows
from .config import DistilConfig, _digest

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
