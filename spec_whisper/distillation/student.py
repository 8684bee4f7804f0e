"""The assistant: copied decoder layers (feed-forward blocks pruned to fit), shortlist head."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from itertools import chain

from torch import Tensor
from transformers import WhisperForCausalLM, WhisperForConditionalGeneration

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
    label_tokens: Iterable[Tensor],
    size: int,
    required: Iterable[int],
    excluded: Iterable[int],
    vocab: int,
    general: Iterable[int] | None = None,
) -> list[int]:
    """Token ids in priority order: `required` (end-of-text, prompt tokens), then alternately the
    transcripts' next most frequent token and the next token of `general`, a ranking of the language's
    everyday vocabulary (`vocabulary.word_token_order`), or by default the next lowest BPE id. Whisper's
    BPE ids follow merge order, which follows the tokenizer's training frequencies over a large
    multilingual corpus, so they cover the general vocabulary that a few hours of transcripts miss,
    while the transcripts cover their own languages (held-out English at 4k tokens: 67.4% transcripts
    first, 72.8% BPE ids only, 71.1% alternating; German 39.1%, 33.3%, 35.3%). Suppressed tokens are
    never generated, so they are left out. When `general` runs out, the BPE ids take its place."""
    counts = Counter(t for row in label_tokens for t in row.tolist())
    by_frequency = iter(t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    second = range(vocab) if general is None else chain(general, range(vocab))
    order = list(dict.fromkeys(required))
    taken = set(excluded) | set(order)
    sources = [by_frequency, iter(second)]  # taken in turn; an exhausted one drops out
    while len(order) < size and sources:
        source = sources.pop(0)
        token = next((t for t in source if t not in taken), None)
        if token is not None:
            taken.add(token)
            order.append(token)
            sources.append(source)
    return order[:size]
