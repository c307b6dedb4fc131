"""Tiny LLaMA (TLM) of the EuCNC 2025 study, written for this reproduction.

A LLaMA-2 style decoder: RMSNorm pre-norm (eps 1e-5), rotary position
embedding (theta 10000), causal grouped-query attention, SwiGLU feed-forward
without biases, and an output layer tied to the token embedding. Sizes follow
NNCodec's ``TLM_size`` presets (eucnc-experiment.md §5.1).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .tokenizer import VOCAB_SIZE


@dataclass(frozen=True)
class TLMConfig:
    """Architecture of one TLM; max_seq_len bounds the rotary table."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int = VOCAB_SIZE
    multiple_of: int = 32
    norm_eps: float = 1e-5
    max_seq_len: int = 1525
    dropout: float = 0.1

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


# NNCodec TLM_size presets; "nano" is this reproduction's CPU size.
TLM_PRESETS: dict[str, TLMConfig] = {
    "nano": TLMConfig(dim=48, n_layers=4, n_heads=4, n_kv_heads=2),
    "0": TLMConfig(dim=64, n_layers=8, n_heads=8, n_kv_heads=4),
    "1": TLMConfig(dim=288, n_layers=10, n_heads=6, n_kv_heads=6),
    "2": TLMConfig(dim=512, n_layers=10, n_heads=8, n_kv_heads=8),
    "3": TLMConfig(dim=768, n_layers=12, n_heads=12, n_kv_heads=12),
}


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(
            x.float().pow(2).mean(-1, keepdim=True) + self.eps
        )
        return normed.type_as(x) * self.weight


def rotary_tables(head_dim: int, max_len: int, theta: float = 10000.0):
    """cos and sin tables [max_len, head_dim // 2] of the rotary embedding."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(max_len).float(), inv_freq)
    return torch.cos(angles), torch.sin(angles)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive (even, odd) feature pairs of x [b, t, h, d] by position."""
    x_even, x_odd = x.float()[..., 0::2], x.float()[..., 1::2]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rotated = torch.stack(
        (x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1
    )
    return rotated.flatten(-2).type_as(x)


class Attention(nn.Module):
    """Causal grouped-query self-attention with an optional key/value cache."""

    def __init__(self, cfg: TLMConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = (
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.head_dim,
        )
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache=None):
        batch, steps, _ = x.shape
        q = self.wq(x).view(batch, steps, self.n_heads, self.head_dim)
        k = self.wk(x).view(batch, steps, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(batch, steps, self.n_kv_heads, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        # With a cache, the new keys/values extend those of earlier positions.
        if cache is not None:
            if cache.get("k") is not None:
                k = torch.cat([cache["k"], k], dim=1)
                v = torch.cat([cache["v"], v], dim=1)
            cache["k"], cache["v"] = k, v
        repeat = self.n_heads // self.n_kv_heads
        if repeat > 1:
            k = k.repeat_interleave(repeat, dim=2)
            v = v.repeat_interleave(repeat, dim=2)

        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        past = k.shape[2] - steps
        if past == 0:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=True,
            )
        else:
            # Query i sits at absolute position past + i and sees keys <= it.
            key_pos = torch.arange(k.shape[2], device=x.device)
            query_pos = past + torch.arange(steps, device=x.device)
            mask = key_pos[None, :] <= query_pos[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, steps, -1)
        return self.resid_dropout(self.wo(out))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: TLMConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden_dim, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden_dim, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    """Pre-norm attention and feed-forward, each with a residual connection."""

    def __init__(self, cfg: TLMConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.attention(self.attention_norm(x), cos, sin, cache)
        return x + self.feed_forward(self.ffn_norm(x))


class TinyLlama(nn.Module):
    """The TLM; ``output.weight`` is the token embedding matrix itself."""

    def __init__(self, cfg: TLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.output.weight = self.tok_embeddings.weight
        cos, sin = rotary_tables(cfg.head_dim, cfg.max_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """N(0, 0.02) everywhere; residual projections scaled by 1/sqrt(2 layers)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for name, param in self.named_parameters():
            if name.endswith("w3.weight") or name.endswith("wo.weight"):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    def forward(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        caches=None,
        start_pos: int = 0,
    ):
        """Logits [b, t, vocab]; with targets also the mean cross-entropy.

        caches: one dict per layer for incremental decoding; start_pos is the
        absolute position of tokens[:, 0].
        """
        steps = tokens.shape[1]
        if start_pos + steps > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence of {start_pos + steps} tokens exceeds max_seq_len {self.cfg.max_seq_len}"
            )
        cos = self.rope_cos[start_pos : start_pos + steps]
        sin = self.rope_sin[start_pos : start_pos + steps]
        h = self.dropout(self.tok_embeddings(tokens))
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, None if caches is None else caches[i])
        logits = self.output(self.norm(h))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1
        )
        return logits, loss


def build_model(
    size: str, max_seq_len: int = 1525, dropout: float = 0.1, seed: int = 808
) -> TinyLlama:
    """A freshly initialised TLM of a preset size, seeded for reproducibility."""
    if size not in TLM_PRESETS:
        raise ValueError(
            f"unknown TLM size {size!r}; choose one of {sorted(TLM_PRESETS)}"
        )
    base = TLM_PRESETS[size]
    cfg = TLMConfig(
        dim=base.dim,
        n_layers=base.n_layers,
        n_heads=base.n_heads,
        n_kv_heads=base.n_kv_heads,
        max_seq_len=max_seq_len,
        dropout=dropout,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = TinyLlama(cfg)
    torch.random.set_rng_state(generator_state)
    return model


def count_unique_parameters(model: nn.Module) -> int:
    """Parameters counted once each (the tied embedding once)."""
    return sum(p.numel() for p in model.parameters())


def model_to_arrays(model: nn.Module) -> "OrderedDict[str, np.ndarray]":
    """Unique parameters as float32 numpy arrays; the tied matrix is sent once."""
    return OrderedDict(
        (name, param.detach().cpu().numpy().astype(np.float32, copy=True))
        for name, param in model.named_parameters()
    )


def arrays_to_model(model: nn.Module, arrays) -> None:
    """Load unique parameters (as from model_to_arrays) into the model in place."""
    params = dict(model.named_parameters())
    missing = [name for name in params if name not in arrays]
    unexpected = [name for name in arrays if name not in params]
    if missing or unexpected:
        raise ValueError(
            f"parameter names differ: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            value = torch.as_tensor(np.asarray(arrays[name]))
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"{name}: shape {tuple(value.shape)} != model {tuple(param.shape)}"
                )
            param.copy_(value.to(param.dtype))
