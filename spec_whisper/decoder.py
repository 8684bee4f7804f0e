"""A Whisper decoder over a static, position-indexed KV cache.

Every row of the batch carries its own position: a forward writes the keys and values of its
`T` new tokens at `start[b] .. start[b] + T - 1` and attends only to positions at or before each
query. Rejected draft tokens therefore need no rollback: their slots are masked out and simply
overwritten by the next forward. Cross-attention keys and values are computed once per request.

The weights are taken from a Hugging Face `WhisperDecoder` (of a `WhisperForConditionalGeneration`
or a decoder-only `WhisperForCausalLM`) and stored for the fastest matmul path on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DecoderCache", "FastLinear", "WhisperDecoderRunner", "compaction_order"]


class FastLinear:
    """`y = x @ W.T + b` with weights prepacked for oneDNN on CPU in fp32.

    At batch 1 a decoder step is bound by memory bandwidth. PyTorch's default fp32 path costs
    about 4x more for 5 input rows than for 1 on the 51,865 x 512 vocabulary projection, which
    would make verifying a draft as dear as decoding it token by token; oneDNN's prepacked inner
    product reads the weights once for all rows (measured here: 1 row 4.2 ms, 5 rows 5.4 ms).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else bias.detach().contiguous()
        self.packed = (
            weight.device.type == "cpu"
            and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
        )
        weight = weight.detach().contiguous()
        # The batch-size hint only picks oneDNN's blocking; 8 was as fast as any for 1..64 rows.
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, 8) if self.packed else weight

    def __call__(self, x: Tensor) -> Tensor:
        if not self.packed:
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)


@dataclass
class _Layer:
    self_qkv: FastLinear
    self_out: FastLinear
    self_norm: nn.LayerNorm
    cross_q: FastLinear
    cross_kv: FastLinear
    cross_out: FastLinear
    cross_norm: nn.LayerNorm
    fc1: FastLinear
    fc2: FastLinear
    final_norm: nn.LayerNorm


@dataclass
class DecoderCache:
    """Self-attention keys/values `[layers, B, H, max_len, Dh]` and cross-attention keys/values
    `[layers, B, H, n_audio_frames, Dh]` for one batch of sequences."""

    self_k: Tensor
    self_v: Tensor
    cross_k: Tensor
    cross_v: Tensor

    def select(self, order: Tensor) -> DecoderCache:
        """Keep rows `order` (from `compaction_order`) in the leading slots, dropping the rest.

        Finished sequences leave the batch so they cost nothing; moving only the few rows that
        fill the holes costs one row copy per finished sequence instead of a copy of the batch.
        """
        moved = (order != torch.arange(len(order))).nonzero().flatten()
        tensors = list(vars(self).values())
        for t in tensors:
            t[:, moved] = t[:, order[moved]]
        return DecoderCache(*(t[:, : len(order)] for t in tensors))


def compaction_order(finished: Tensor) -> Tensor:
    """Old row index for each new slot: surviving rows keep their slot unless it lies past the
    new batch size, in which case they move into the slot of a finished row."""
    keep = (~finished).nonzero().flatten()
    n = len(keep)
    order = torch.arange(n)
    holes = finished[:n].nonzero().flatten()
    order[holes] = keep[keep >= n]
    return order


def _fuse(*linears: nn.Linear) -> FastLinear:
    weight = torch.cat([lin.weight for lin in linears])
    biases = [lin.bias if lin.bias is not None else torch.zeros_like(lin.weight[:, 0]) for lin in linears]
    return FastLinear(weight, torch.cat(biases))


class WhisperDecoderRunner:
    """Runs one Whisper decoder (main model or assistant) over a `DecoderCache`."""

    def __init__(self, hf_decoder: nn.Module, output_weight: Tensor, shortlist: Tensor | None = None) -> None:
        """`shortlist`: token ids the output projection is restricted to (an assistant's cheap head);
        the other tokens get -inf logits, so a draft simply stops being right where it needs one."""
        first = hf_decoder.layers[0]
        self.num_heads = first.self_attn.num_heads if hasattr(first.self_attn, "num_heads") else None
        self.d_model = hf_decoder.embed_tokens.weight.shape[1]
        if self.num_heads is None:
            self.num_heads = self.d_model // first.self_attn.head_dim
        self.head_dim = self.d_model // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.max_positions = hf_decoder.embed_positions.weight.shape[0]
        self.embed_tokens = hf_decoder.embed_tokens.weight.detach()
        self.embed_positions = hf_decoder.embed_positions.weight.detach()
        self.final_norm = hf_decoder.layer_norm
        self.vocab_size = output_weight.shape[0]
        self.shortlist = shortlist
        self.output = FastLinear(output_weight if shortlist is None else output_weight[shortlist], None)
        self.layers = [
            _Layer(
                self_qkv=_fuse(lay.self_attn.q_proj, lay.self_attn.k_proj, lay.self_attn.v_proj),
                self_out=FastLinear(lay.self_attn.out_proj.weight, lay.self_attn.out_proj.bias),
                self_norm=lay.self_attn_layer_norm,
                cross_q=FastLinear(lay.encoder_attn.q_proj.weight, lay.encoder_attn.q_proj.bias),
                cross_kv=_fuse(lay.encoder_attn.k_proj, lay.encoder_attn.v_proj),
                cross_out=FastLinear(lay.encoder_attn.out_proj.weight, lay.encoder_attn.out_proj.bias),
                cross_norm=lay.encoder_attn_layer_norm,
                fc1=FastLinear(lay.fc1.weight, lay.fc1.bias),
                fc2=FastLinear(lay.fc2.weight, lay.fc2.bias),
                final_norm=lay.final_layer_norm,
            )
            for lay in hf_decoder.layers
        ]

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.dtype

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def new_cache(self, encoder_states: Tensor) -> DecoderCache:
        """Allocate the self-attention cache and compute cross-attention keys/values once."""
        batch, frames, _ = encoder_states.shape
        n = len(self.layers)
        shape = (n, batch, self.num_heads, self.max_positions, self.head_dim)
        self_k = torch.zeros(shape, dtype=self.dtype, device=encoder_states.device)
        cross = torch.empty(
            (2, n, batch, self.num_heads, frames, self.head_dim),
            dtype=self.dtype,
            device=encoder_states.device,
        )
        states = encoder_states.to(self.dtype)
        for i, layer in enumerate(self.layers):
            k, v = layer.cross_kv(states).chunk(2, dim=-1)
            cross[0, i], cross[1, i] = self._heads(k), self._heads(v)
        return DecoderCache(self_k, torch.zeros_like(self_k), cross[0], cross[1])

    def forward(self, tokens: Tensor, start: Tensor, cache: DecoderCache) -> Tensor:
        """Logits `[B, T, vocab]` for `tokens [B, T]` placed at positions `start[b] + t`."""
        batch, steps = tokens.shape
        positions = start[:, None] + torch.arange(steps, device=tokens.device)
        length = int(positions.max()) + 1
        # Query t of row b may see every key at or before its own position, nothing after.
        visible = torch.arange(length, device=tokens.device) <= positions[..., None]
        visible = visible[:, None]
        rows = torch.arange(batch, device=tokens.device)[:, None]
        x = self.embed_tokens[tokens] + self.embed_positions[positions]
        for i, layer in enumerate(self.layers):
            h = layer.self_norm(x)
            q, k, v = layer.self_qkv(h).chunk(3, dim=-1)
            cache.self_k[i][rows, :, positions] = k.view(batch, steps, self.num_heads, self.head_dim)
            cache.self_v[i][rows, :, positions] = v.view(batch, steps, self.num_heads, self.head_dim)
            attn = F.scaled_dot_product_attention(
                self._heads(q) * self.scaling,
                cache.self_k[i][:, :, :length],
                cache.self_v[i][:, :, :length],
                attn_mask=visible,
                scale=1.0,
            )
            x = x + layer.self_out(attn.transpose(1, 2).reshape(batch, steps, self.d_model))
            h = layer.cross_norm(x)
            attn = F.scaled_dot_product_attention(
                self._heads(layer.cross_q(h)) * self.scaling, cache.cross_k[i], cache.cross_v[i], scale=1.0
            )
            x = x + layer.cross_out(attn.transpose(1, 2).reshape(batch, steps, self.d_model))
            x = x + layer.fc2(F.gelu(layer.fc1(layer.final_norm(x))))
        logits = self.output(self.final_norm(x))
        if self.shortlist is None:
            return logits
        full = logits.new_full((*logits.shape[:-1], self.vocab_size), -torch.inf)
        return full.index_copy_(-1, self.shortlist, logits)
