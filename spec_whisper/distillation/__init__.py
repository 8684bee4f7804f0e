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
main model's transcripts; the engine drafts with a prefix of that order (`shortlist.json`, saved
beside the weights) and, for a batch of one language, with that language's own list, its transcripts
alternating with its everyday words (`vocabulary.py`), saved in the same file.
"""

from .config import CHECKPOINT_FILE, DEFAULT_SPEECH_DIR, SETTINGS_FILE, DistilConfig, default_threads
from .labelling import LabelledSet, label_clips
from .recipe import default_clips, distil, ensure_assistant, labelled_data, model_card, token_order
from .speech import Clip, real_clips, synthesis_texts, synthetic_clips
from .student import added_parameters, build_shortlist, init_assistant
from .training import evaluate_acceptance, train

__all__ = [
    "CHECKPOINT_FILE",
    "DEFAULT_SPEECH_DIR",
    "SETTINGS_FILE",
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
    "model_card",
    "real_clips",
    "synthesis_texts",
    "synthetic_clips",
    "token_order",
    "train",
]
