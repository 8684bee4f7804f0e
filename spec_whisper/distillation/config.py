"""The recipe's settings, its file names and the default speech folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

SETTINGS_FILE = "distillation.json"
CHECKPOINT_FILE = "checkpoint.pt"
# /work/main/spec_whisper/distillation/config.py -> /work/shared/data/speech; or SPEECH_DATA_DIR.
_SHARED_SPEECH_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "speech"
DEFAULT_SPEECH_DIR = Path(os.environ.get("SPEECH_DATA_DIR", _SHARED_SPEECH_DIR))


@dataclass(frozen=True)
class DistilConfig:
    # Main decoder layers copied into the assistant (Python indices: -1 is the last).
    layers: tuple[int, ...] = (0, -1)
    # Hidden units kept in each copied feed-forward block; None keeps as many as fit `max_added`.
    ffn_dim: int | None = None
    # The assistant's own parameters (its layers and final norm; embeddings are the main model's)
    # may add at most this share to the main model's.
    max_added: float = 0.10
    # Keep the copied layers' cross-attention key/value projections frozen at the main model's, so the
    # engine reuses the main decoder's cross-attention cache instead of computing its own per request.
    share_cross_attention: bool = True
    steps: int = 500
    batch_size: int = 8
    lr: float = 5e-4
    warmup_steps: int = 20
    weight_decay: float = 0.01
    # Teacher probabilities kept per position for the soft loss; loss = soft + hard_weight * hard.
    top_k: int = 16
    hard_weight: float = 0.5
    # + hidden_weight x the mean squared distance between the assistant's last hidden state and the
    # main decoder's. The heads are tied, so this teaches the main model's logits over the whole
    # vocabulary. Held-out acceptance with each language's own list, without -> with: en 79.6% ->
    # 82.6%, de/es/fr/pt +11-13 points; training accuracy 99.5% -> 89.7% (docs/benchmarks.md, 2026-12-05).
    hidden_weight: float = 1.0
    # Tokens the head is trained over (the most frequent of the training transcripts first) and
    # the shortlist saved for the engine (a prefix of the same order). Held-out English with its own
    # list: 6k 75.2%, 8k 76.7%, 10k 77.8%, 12k 78.5%, 16k 78.5%, full head 79.1%; a 12k int8 head reads
    # 6 MB per draft step, about 3% of it. Training over all 12k rather than the 8k most frequent took
    # held-out English from 78.9% to 80.0% with its own list (docs/benchmarks.md, 2026-12-02).
    train_vocab: int = 12288
    shortlist: int = 12288
    # Also a shortlist per language of the training data, of the same size, with that language's
    # everyday vocabulary (`vocabulary.word_token_order`); the engine drafts each language with its own.
    language_shortlists: bool = True
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


def default_threads() -> int:
    """As many threads as cores are idle now (two on an idle 2-core machine), at least one: an OpenMP
    team whose threads are descheduled waits at every barrier (measured here under a load of 9: a
    whisper-base decoder step took 754 ms with 2 threads, 68 ms with 1). Idle cores are sampled, not
    read from the load average, which lags by a minute: right after the set-up's own installs it
    read above 1.0 on an idle machine and halved the distillation's speed."""
    return max(1, min(os.cpu_count() or 1, round(idle_cores())))


def idle_cores(seconds: float = 0.5) -> float:
    """Cores left idle over the next `seconds` (Linux's /proc/stat; elsewhere the load average)."""
    try:
        before = _cpu_times()
        time.sleep(seconds)
        after = _cpu_times()
    except OSError:
        return (os.cpu_count() or 1) - os.getloadavg()[0]
    total, idle = (a - b for a, b in zip(after, before, strict=True))
    return (os.cpu_count() or 1) * idle / total if total else 0.0


def _cpu_times() -> tuple[int, int]:
    """Total and idle (with I/O wait) jiffies of all cores since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]
