"""Training the assistant on labelled data, and measuring its acceptance."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm
from transformers import WhisperForCausalLM, WhisperForConditionalGeneration

from ..decoder import cross_attention_kv_parameters
from ..engine import SpeculativeWhisper
from ..logit_filters import Positions, apply_filters
from .config import DistilConfig
from .labelling import LabelledSet

# ----------------------------------------------------------------------------------------------
# Training.


@dataclass
class _Targets:
    """Per window, positions `prompt - 1 ..` predict the transcript and end-of-text."""

    hard: list[Tensor]  # [targets] index into the training vocabulary, -1 when outside it
    soft_i: list[Tensor]  # [targets, k] same indexing
    soft_p: list[Tensor]  # [targets, k] renormalised over the entries inside the vocabulary
    hidden: list[Tensor] | None  # [inputs, d_model] the main decoder's last hidden state


@torch.inference_mode()
def last_hidden_states(
    model: WhisperForConditionalGeneration | WhisperForCausalLM, data: LabelledSet
) -> list[Tensor]:
    """A decoder's last hidden state at every position of every window, teacher-forced. Of the main
    model, these are the assistant's targets: the output head is tied to the embeddings in both
    models, so an assistant that matches them matches the main model's logits over the whole
    vocabulary, not only its top-k probabilities."""
    decoder = model.model.decoder.eval()
    return [
        decoder(input_ids=x[None], encoder_hidden_states=data.states[i : i + 1].float(), use_cache=False)
        .last_hidden_state[0]
        .clone()
        for i, x in enumerate(data.inputs)
    ]


def _targets(
    data: LabelledSet, vocab: list[int], full_vocab: int, end: int, hidden: list[Tensor] | None = None
) -> _Targets:
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
    return _Targets(hard, soft_i, soft_p, hidden)


def _collate(data: LabelledSet, targets: _Targets, rows: list[int], end: int):
    width = max(len(data.inputs[r]) for r in rows)
    k = targets.soft_i[rows[0]].shape[1]
    inputs = torch.full((len(rows), width), end)
    hard = torch.full((len(rows), width), -2)  # -2: no target; -1: a target outside the vocabulary
    soft_i = torch.zeros((len(rows), width, k), dtype=torch.long)
    soft_p = torch.zeros((len(rows), width, k))
    hidden = None if targets.hidden is None else torch.zeros((len(rows), width, targets.hidden[0].shape[-1]))
    for b, r in enumerate(rows):
        x, p = data.inputs[r], data.prompt_lens[r]
        inputs[b, : len(x)] = x
        hard[b, p - 1 : len(x)] = targets.hard[r]
        soft_i[b, p - 1 : len(x)] = targets.soft_i[r]
        soft_p[b, p - 1 : len(x)] = targets.soft_p[r]
        if hidden is not None:
            hidden[b, : len(x)] = targets.hidden[r]
    return inputs, data.states[rows].float(), hard, soft_i, soft_p, hidden


def _loss(
    assistant: WhisperForCausalLM, head: Tensor, batch, hard_weight: float, hidden_weight: float = 0.0
) -> tuple[Tensor, float, float]:
    """Soft + hard cross-entropy over the training vocabulary (+ the squared distance to the main
    decoder's hidden states, where the batch has them); also the share of positions where the
    assistant's first choice is the main model's token (what greedy drafting is scored on)."""
    inputs, states, hard, soft_i, soft_p, teacher = batch
    decoder = assistant.model.decoder
    hidden = decoder(input_ids=inputs, encoder_hidden_states=states, use_cache=False).last_hidden_state
    valid = hard > -2
    logp = F.linear(hidden[valid], head).log_softmax(-1)
    soft = -(soft_p[valid] * logp.gather(1, soft_i[valid])).sum(-1).mean()
    labels = hard[valid]
    inside = labels >= 0
    ce = F.nll_loss(logp[inside], labels[inside]) if inside.any() else logp.sum() * 0
    agree = (logp.argmax(-1) == labels).float().mean().item()
    loss = soft + hard_weight * ce
    if teacher is not None and hidden_weight:
        loss = loss + hidden_weight * (hidden[valid] - teacher[valid]).pow(2).mean()
    return loss, agree, int(valid.sum())


def _batch_rows(n: int, batch: int, seed: int, step: int) -> list[int]:
    """The rows of step `step`: epochs are seeded permutations, so resuming needs no RNG state."""
    per_epoch = max(1, n // batch)
    epoch, slot = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[slot * batch : (slot + 1) * batch].tolist() or order[:batch].tolist()


def _trainable(assistant: WhisperForCausalLM, share_cross_attention: bool) -> list[torch.nn.Parameter]:
    decoder = assistant.model.decoder
    # The embeddings are the main model's and stay so (the output head is tied to them).
    frozen = [decoder.embed_tokens.weight, decoder.embed_positions.weight]
    if share_cross_attention:
        frozen += [p for layer in decoder.layers for p in cross_attention_kv_parameters(layer)]
    for p in frozen:
        p.requires_grad_(False)
    return [p for p in [*decoder.layers.parameters(), *decoder.layer_norm.parameters()] if p.requires_grad]


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
    main: WhisperForConditionalGeneration | None = None,
) -> dict:
    """Train in place for `config.steps` steps (resuming from `checkpoint` when it holds this run's
    state) and return the record: steps, seconds, losses and the evaluation curve. `main` is the
    teacher, needed when `config.hidden_weight` is set. `stop_after` ends the run early at that
    step, as an interruption would (for tests)."""
    if config.hidden_weight and main is None:
        raise ValueError("config.hidden_weight needs the main model (main=...) for its hidden states")
    torch.manual_seed(config.seed)
    params = _trainable(assistant, config.share_cross_attention)
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
    hidden = last_hidden_states(main, data) if config.hidden_weight else None
    targets = _targets(data, vocab, assistant.config.vocab_size, end_of_text, hidden)
    assistant.train()
    bar = tqdm(total=config.steps, initial=record["step"], desc="training", disable=not progress)
    running = None
    postfix: dict[str, str] = {}
    while record["step"] < min(config.steps, stop_after or config.steps) and not record["stopped_by_time"]:
        began = time.perf_counter()
        rows = _batch_rows(len(data.inputs), config.batch_size, config.seed, record["step"])
        batch = _collate(data, targets, rows, end_of_text)
        loss, agree, _ = _loss(assistant, head, batch, config.hard_weight, config.hidden_weight)
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
        apply_filters(engine.filters, logits, Positions.teacher_forced(x[None], p, logits.shape[1]))
        labels = torch.cat([x[p:], torch.tensor([engine.tokens.end_of_text])])
        total += len(labels)
        for name in shortlists:
            scored = logits[0] + masks[name] if name in masks else logits[0]
            hits[name] += int((scored.argmax(-1) == labels).sum())
    return {name: hits[name] / max(1, total) for name in shortlists}
