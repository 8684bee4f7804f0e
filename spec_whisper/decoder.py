"""A Whisper decoder over a static, position-indexed KV cache.

Every row of the batch carries its own position: a forward writes the keys and values of its
`T` new tokens at `start[b] .. start[b] + T - 1` and attends only to positions at or before each
query. Rejected draft tokens therefore need no rollback: their slots are masked out and simply
overwritten by the next forward. Cross-attention keys and values are computed once per request.

The weights are taken from a Hugging Face `WhisperDecoder` (of a `WhisperForConditionalGeneration`
or a decoder-only `WhisperForCausalLM`) and stored for the fastest matmul path on the device.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cpu_attention import cross_attention, self_attention
from .cpu_kernels import kernels, kernels_available
from .cuda_graphs import GraphedPasses
from .heads import FullHead, Mask, ShortlistHead, main_head
from .linear import (
    FewRowsLinear,
    Int8Linear,
    Linear,
    decoder_linear,
    draft_linear,
    fuse_linears,
    int8_available,
    many_rows_linear,
)

Head = FullHead | ShortlistHead

__all__ = [
    "DecoderCache",
    "WhisperDecoderRunner",
    "compaction_order",
    "cross_attention_kv_parameters",
    "shared_cross_attention",
]


@dataclass
class _Layer:
    self_qkv: Linear
    self_out: Linear
    self_norm: nn.LayerNorm
    cross_q: Linear
    cross_kv: Linear | None  # None: the layer reads another decoder's cross-attention cache
    cross_out: Linear
    cross_norm: nn.LayerNorm
    fc1: Linear
    fc2: Linear
    final_norm: nn.LayerNorm


@dataclass
class DecoderCache:
    """Self-attention keys/values `[layers, B, H, max_len, Dh]` and, per layer, cross-attention
    keys/values `[B, H, n_audio_frames, Dh]` for one batch of sequences. An assistant's cross-attention
    entries may be the main model's own tensors, or narrower copies (`WhisperDecoderRunner.cross_from`).
    `cross_frames [B]` (on the host): the audio frames each row attends to, where fewer than all."""

    self_k: Tensor
    self_v: Tensor
    cross_k: tuple[Tensor, ...]
    cross_v: tuple[Tensor, ...]
    cross_frames: Tensor | None = None

    def repeated(self, batch: int) -> DecoderCache:
        """`batch` copies of this one-row cache: rows to time passes over (`cost_model.TableTiming`)."""
        if self.self_k.shape[1] != 1:
            raise ValueError(f"repeated() takes a one-row cache, not {self.self_k.shape[1]} rows")
        frames = None if self.cross_frames is None else self.cross_frames.repeat(batch)
        return DecoderCache(
            self.self_k.repeat(1, batch, 1, 1, 1),
            self.self_v.repeat(1, batch, 1, 1, 1),
            tuple(t.repeat(batch, 1, 1, 1) for t in self.cross_k),
            tuple(t.repeat(batch, 1, 1, 1) for t in self.cross_v),
            frames,
        )

    def select(self, order: Tensor) -> DecoderCache:
        """Keep rows `order` (from `compaction_order`) in the leading slots, dropping the rest.

        Finished sequences leave the batch so they cost nothing; moving only the few rows that
        fill the holes costs one row copy per finished sequence instead of a copy of the batch.
        Moving a row twice (a tensor shared with another cache) copies the same values again.
        """
        order = order.to(self.self_k.device)
        moved = (order != torch.arange(len(order), device=order.device)).nonzero().flatten()
        n = len(order)
        for t in (self.self_k, self.self_v):
            t[:, moved] = t[:, order[moved]]
        for t in (*self.cross_k, *self.cross_v):
            t[moved] = t[order[moved]]
        return DecoderCache(
            self.self_k[:, :n],
            self.self_v[:, :n],
            tuple(t[:n] for t in self.cross_k),
            tuple(t[:n] for t in self.cross_v),
            None if self.cross_frames is None else self.cross_frames[order.cpu()],
        )


def compaction_order(finished: Tensor) -> Tensor:
    """Old row index for each new slot: surviving rows keep their slot unless it lies past the
    new batch size, in which case they move into the slot of a finished row."""
    keep = (~finished).nonzero().flatten()
    n = len(keep)
    order = torch.arange(n)
    holes = finished[:n].nonzero().flatten()
    order[holes] = keep[keep >= n]
    return order


def cross_attention_kv_parameters(layer: nn.Module) -> list[nn.Parameter]:
    """The parameters that turn encoder states into a Hugging Face decoder layer's cross-attention
    keys and values: what the distillation freezes and `shared_cross_attention` compares."""
    attn = layer.encoder_attn
    return [*attn.k_proj.parameters(), *attn.v_proj.parameters()]


def shared_cross_attention(main: nn.Module, assistant: nn.Module) -> list[int | None]:
    """For each assistant decoder layer, a main decoder layer with the same cross-attention key and
    value projections, or None. Both read the same encoder states, so such a layer's cross-attention
    keys and values are the main model's: computing them again per request would be pure waste."""

    def projections(layer: nn.Module) -> list[Tensor]:
        return [p.detach() for p in cross_attention_kv_parameters(layer)]

    def same(a: list[Tensor], b: list[Tensor]) -> bool:
        return len(a) == len(b) and all(
            x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True)
        )

    mains = [projections(layer) for layer in main.layers]
    return [
        next((j for j, theirs in enumerate(mains) if same(projections(layer), theirs)), None)
        for layer in assistant.layers
    ]


class WhisperDecoderRunner:
    """Runs one Whisper decoder (main model or assistant) over a `DecoderCache`."""

    def __init__(
        self,
        hf_decoder: nn.Module,
        output_weight: Tensor,
        shortlist: Tensor | None = None,
        cross_from: list[int | None] | None = None,
        int8: bool = False,
        language_shortlists: dict[str, Tensor] | None = None,
        cuda_graphs: bool = True,
        cross_dtype: torch.dtype | None = None,
    ) -> None:
        """`shortlist`: token ids the output projection is restricted to (an assistant's cheap
        `ShortlistHead`); without one, the main model's exact head. `language_shortlists`: more such
        heads, one per language (`head_for`). `int8`: approximate int8 products
        throughout, for an assistant, whose drafts need not be exact (x86 CPUs; fp32 elsewhere).
        `cross_from[i]`: the main decoder layer whose cross-attention cache layer `i` reads
        (`shared_cross_attention`); `new_cache` then takes that cache instead of computing one.
        `cuda_graphs`: on a CUDA device, replay passes from recorded graphs (`cuda_graphs.py`).
        `cross_dtype`: keep the cross-attention keys and values in this dtype (default: the weights'),
        for an assistant: at bf16 a draft step reads half the bytes of its largest read, the keys and
        values of 1500 frames; a layer that shares the main model's then reads a bf16 copy of it."""
        first = hf_decoder.layers[0]
        self.num_heads = first.self_attn.num_heads if hasattr(first.self_attn, "num_heads") else None
        self.d_model = hf_decoder.embed_tokens.weight.shape[1]
        if self.num_heads is None:
            self.num_heads = self.d_model // first.self_attn.head_dim
        self.head_dim = self.d_model // self.num_heads
        self.max_positions = hf_decoder.embed_positions.weight.shape[0]
        self.embed_tokens = hf_decoder.embed_tokens.weight.detach()
        self.embed_positions = hf_decoder.embed_positions.weight.detach()
        self.final_norm = hf_decoder.layer_norm
        self.vocab_size = output_weight.shape[0]
        self.output_weight = output_weight.detach()
        self.shortlist = shortlist
        self.head: Head
        if shortlist is None and not int8:
            self.head = main_head(output_weight)
        else:
            every = torch.arange(self.vocab_size) if shortlist is None else shortlist
            self.head = ShortlistHead(output_weight, every, int8)
        self.language_heads = {
            lang: ShortlistHead(output_weight, ids, int8) for lang, ids in (language_shortlists or {}).items()
        }
        int8 = int8 and int8_available(output_weight)
        self._widened_heads: dict[tuple[int, int, int], ShortlistHead] = {}  # `head_for`
        # A main model's weights are read once per pass: streamed past the caches the assistant uses.
        linear = draft_linear if int8 else partial(decoder_linear, stream=shortlist is None)
        self.int8 = int8
        self.cross_from = cross_from or [None] * len(hf_decoder.layers)
        self.encoder_dim = hf_decoder.layers[0].encoder_attn.k_proj.in_features
        self.cross_dtype = cross_dtype or self.embed_tokens.dtype
        self.layers = [
            _Layer(
                self_qkv=fuse_linears(
                    lay.self_attn.q_proj, lay.self_attn.k_proj, lay.self_attn.v_proj, kind=linear
                ),
                self_out=linear(lay.self_attn.out_proj.weight, lay.self_attn.out_proj.bias),
                self_norm=lay.self_attn_layer_norm,
                cross_q=linear(lay.encoder_attn.q_proj.weight, lay.encoder_attn.q_proj.bias),
                # Once per request over every frame: a large product.
                cross_kv=None
                if source is not None
                else fuse_linears(
                    lay.encoder_attn.k_proj,
                    lay.encoder_attn.v_proj,
                    kind=Int8Linear if int8 else many_rows_linear,
                ),
                cross_out=linear(lay.encoder_attn.out_proj.weight, lay.encoder_attn.out_proj.bias),
                cross_norm=lay.encoder_attn_layer_norm,
                fc1=linear(lay.fc1.weight, lay.fc1.bias),
                fc2=linear(lay.fc2.weight, lay.fc2.bias),
                final_norm=lay.final_layer_norm,
            )
            for lay, source in zip(hf_decoder.layers, self.cross_from, strict=True)
        ]
        self.fuse_layers()
        on_gpu = cuda_graphs and self.device.type == "cuda"
        self.graphs = GraphedPasses(self.fixed_shape_states, self.device) if on_gpu else None
        if self.device.type == "cpu" and self.dtype == torch.float32:
            kernels_available()  # built (or found built) now rather than during the first request

    def fuse_layers(self) -> None:
        """Run each layer's pass as one kernel call where the layers' products allow it (again after
        a benchmark swaps them)."""
        self.fused = _fused_layers(self.layers, self.head_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.device

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def new_cache(
        self, encoder_states: Tensor, main_cache: DecoderCache | None = None, frames: Tensor | None = None
    ) -> DecoderCache:
        """Allocate the self-attention cache and compute cross-attention keys/values once; layers
        with a `cross_from` source take the main decoder's from `main_cache` instead. `frames [B]`:
        each row attends to its first encoder frames only, and the keys and values stop at the most
        of them (an assistant's drafts need not be exact; see the engine)."""
        if frames is not None:  # in the form the kernels take, which the fused path does not re-check
            frames = frames.to("cpu", torch.int64).contiguous()
        longest = None if frames is None else int(frames.max())
        encoder_states = encoder_states[:, :longest]
        batch = encoder_states.shape[0]
        n = len(self.layers)
        shape = (n, batch, self.num_heads, self.max_positions, self.head_dim)
        self_k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        states = encoder_states.to(self.device, self.dtype)
        cross_k, cross_v = [], []
        for layer, source in zip(self.layers, self.cross_from, strict=True):
            if source is not None:
                if main_cache is None:
                    raise ValueError("this decoder reads the main decoder's cross-attention cache: pass it")
                theirs = main_cache.cross_k[source], main_cache.cross_v[source]
                if longest is not None:
                    theirs = tuple(t[:, :, :longest] for t in theirs)
                k, v = (t.to(self.cross_dtype).contiguous() for t in theirs)  # a copy if narrower or trimmed
                cross_k.append(k)
                cross_v.append(v)
                continue
            k, v = layer.cross_kv(states).chunk(2, dim=-1)
            cross_k.append(self._heads(k).to(self.cross_dtype).contiguous())
            cross_v.append(self._heads(v).to(self.cross_dtype).contiguous())
        return DecoderCache(self_k, torch.zeros_like(self_k), tuple(cross_k), tuple(cross_v), frames)

    def forward(self, tokens: Tensor, start: Tensor, cache: DecoderCache) -> Tensor:
        """Logits `[B, T, vocab]` for `tokens [B, T]` placed at positions `start[b] + t`."""
        return self.head.logits(self.states(tokens, start, cache))

    def greedy(
        self,
        tokens: Tensor,
        start: Tensor,
        cache: DecoderCache,
        mask: Mask,
        last: int,
        every_logit: bool = False,
    ) -> Tensor:
        """Greedy tokens `[B, last]` after the last `last` of `tokens` (as `forward`), once `mask`
        has forbidden what the logit filters forbid; the head may skip logits that cannot win, unless
        `every_logit` (a filter reads them all: `logit_filters.reads_every_logit`)."""
        return self.head.greedy(self.states(tokens, start, cache)[:, -last:], mask, every_logit)

    def draft(
        self, tokens: Tensor, start: Tensor, cache: DecoderCache, mask: Mask, head: Head | None = None
    ) -> tuple[Tensor, Tensor]:
        """The greedy token `[B, 1]` after `tokens` (as `greedy` with `last=1`, from `head` or the
        decoder's own) and its probability `[B]`."""
        token, probability = (head or self.head).draft(self.states(tokens, start, cache)[:, -1:], mask)
        return token, probability[:, 0]

    def head_for(self, languages: Collection[str], timestamps: range | None = None) -> Head:
        """The head to draft rows of these languages with: their language's own shortlist when they
        share one, else the shortlist every language shares; with the `timestamps` tokens added
        where the rows decode them (made on first use)."""
        distinct = set(languages)
        head = self.head
        if len(distinct) == 1 and (language := distinct.pop()) in self.language_heads:
            head = self.language_heads[language]
        if timestamps is None or not isinstance(head, ShortlistHead):
            return head
        key = (id(head), timestamps.start, timestamps.stop)
        if key not in self._widened_heads:
            ids = torch.cat([head.shortlist.cpu(), torch.arange(timestamps.start, timestamps.stop)]).unique()
            self._widened_heads[key] = ShortlistHead(self.output_weight, ids, self.int8)
        return self._widened_heads[key]

    def states(self, tokens: Tensor, start: Tensor, cache: DecoderCache) -> Tensor:
        """Final (normed) decoder states `[B, T, d_model]`, writing the tokens' keys/values to `cache`.
        `tokens` and `start` may live on the host: the bookkeeping of decoding does, and the length
        of the attended prefix is read there rather than waited for from the device."""
        if self.graphs is not None:
            return self.graphs.run(tokens, start, cache)
        length = int(start.max()) + tokens.shape[1]
        return self.attend(tokens.to(self.device), start.to(self.device), cache, length)

    def fixed_shape_states(self, tokens: Tensor, start: Tensor, cache: DecoderCache) -> Tensor:
        """`states` attending over every cache slot (those past each query are masked), so that the
        shapes depend only on the rows and tokens: what a CUDA graph records."""
        return self.attend(tokens, start, cache, self.max_positions)

    def attend(self, tokens: Tensor, start: Tensor, cache: DecoderCache, length: int) -> Tensor:
        """`states` for device tensors over the first `length` cache slots (at least up to the last
        position written)."""
        positions = start[:, None] + torch.arange(tokens.shape[1], device=self.device)
        x = self.embed_tokens[tokens] + self.embed_positions[positions]
        if self.fused is not None and kernels() is not None and _fits_fused(cache, start):
            for i, layer in enumerate(self.fused):
                x = layer(
                    x,
                    cache.self_k[i],
                    cache.self_v[i],
                    cache.cross_k[i],
                    cache.cross_v[i],
                    start,
                    cache.cross_frames,
                )
            return self.final_norm(x)
        for i, layer in enumerate(self.layers):
            qkv = layer.self_qkv(layer.self_norm(x))
            attn = self_attention(qkv, cache.self_k[i], cache.self_v[i], start, length)
            x = x + layer.self_out(attn)
            attn = cross_attention(
                layer.cross_q(layer.cross_norm(x)), cache.cross_k[i], cache.cross_v[i], cache.cross_frames
            )
            x = x + layer.cross_out(attn)
            x = x + layer.fc2(F.gelu(layer.fc1(layer.final_norm(x))))
        return self.final_norm(x)


def _fused_layers(layers: list[_Layer], head_dim: int) -> list | None:
    """Each layer's pass as one kernel call (`csrc/decoder_layer.cpp`: the same operators, the same
    bits, without a Python dispatch per operator) where every product of a pass is the few-row
    kernel's; else None."""
    kernel = kernels()
    products = [[lay.self_qkv, lay.self_out, lay.cross_q, lay.cross_out, lay.fc1, lay.fc2] for lay in layers]
    few_rows = all(isinstance(p, FewRowsLinear) for ps in products for p in ps)
    if kernel is None or head_dim != 64 or not few_rows:
        return None

    def norm(n: nn.LayerNorm) -> tuple[Tensor, Tensor, float]:
        return n.weight.detach(), n.bias.detach(), n.eps

    return [
        kernel.DecoderLayer(
            [p.state() for p in ps],
            [norm(layer.self_norm), norm(layer.cross_norm), norm(layer.final_norm)],
            head_dim**-0.5,
        )
        for layer, ps in zip(layers, products, strict=True)
    ]


def _fits_fused(cache: DecoderCache, start: Tensor) -> bool:
    """The fused layers' kernels take each layer's caches contiguous and the positions on the host. A
    compacted cache keeps fewer rows of every layer: the layers' slices are still contiguous (their
    strides are those of layer 0's), the tensor of all layers is not."""
    return (
        start.device.type == "cpu"
        and cache.self_k[0].is_contiguous()
        and cache.self_v[0].is_contiguous()
        and all(t.is_contiguous() for t in (*cache.cross_k, *cache.cross_v))
    )
