"""The recipe's settings, its file names and the default speech folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
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
    # Tokens the head is trained over (the most frequent of the training transcripts first) and
    # the shortlist saved for the engine (a prefix of the same order).
    train_vocab: int = 8192
    shortlist: int = 6144
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
    """Two threads on an idle 2-core machine; one while other processes hold the cores, because an
    OpenMP team whose second thread is descheduled waits at every barrier (measured here under a
    load of 9: a whisper-base decoder step took 754 ms with 2 threads, 68 ms with 1)."""
    return 1 if os.getloadavg()[0] > 1.0 else 2
