"""A KV cache for a batch whose rows come and go: transformers' cache, grown in place.

transformers' ``DynamicCache`` appends each step with ``torch.cat``, copying every
layer's whole cache on every token. ``GrowableLayer`` keeps a preallocated buffer
per layer (capacity grows geometrically) and writes new columns in place; the
model sees views of the filled part, so attention code, masks and positions are
transformers' own.

Rows are left-aligned to a common width (left padding, masked), as ``generate``
does for a batch. Membership changes copy the cache once: ``select`` keeps some
rows and drops columns only padding uses; ``concat`` right-aligns two batches
into one. Both run only when a request joins or leaves, not per token.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ragrail.common.errors import FailedPrecondition

_MIN_CAPACITY = 64


def _capacity(needed: int) -> int:
    """Room for ``needed`` columns plus headroom, so growth copies O(log n) times."""
    return max(_MIN_CAPACITY, needed + needed // 2)


class GrowableLayer(DynamicLayer):
    """One layer's keys and values, [batch, heads, columns, head_dim], written in place."""

    def __init__(self) -> None:
        super().__init__()
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self._k is None or self._v is None or end > self._k.shape[-2]:
            self._set(self._grown(self._k, key_states, end), self._grown(self._v, value_states, end), self.length)
        assert self._k is not None and self._v is not None
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self._set(self._k, self._v, end)
        return self.keys, self.values

    def get_seq_length(self, *args: object) -> int:
        return self.length

    def reset(self) -> None:
        self._k = self._v = None
        self.length = 0
        super().reset()

    def _grown(self, buffer: torch.Tensor | None, like: torch.Tensor, needed: int) -> torch.Tensor:
        b, h, _, d = like.shape
        grown = like.new_zeros((b, h, _capacity(needed), d))
        if buffer is not None and self.length:
            grown[:, :, : self.length] = buffer[:, :, : self.length]
        return grown

    def _set(self, k: torch.Tensor, v: torch.Tensor, length: int) -> None:
        self._k, self._v, self.length = k, v, length
        self.keys = k[:, :, :length]
        self.values = v[:, :, :length]
        self.is_initialized = True

    # -- batch membership --------------------------------------------------------

    def select(self, rows: torch.Tensor, drop_left: int) -> None:
        """Keeps ``rows`` (indices) and forgets the first ``drop_left`` columns."""
        if self._k is None or self._v is None:
            return
        width = self.length - drop_left
        self._set(
            _copy_right_aligned([self._k[rows, :, drop_left : self.length]], width),
            _copy_right_aligned([self._v[rows, :, drop_left : self.length]], width),
            width,
        )

    def concat(self, other: GrowableLayer) -> None:
        """Appends ``other``'s rows; the narrower batch is left-padded to the wider."""
        assert self._k is not None and self._v is not None and other._k is not None and other._v is not None
        width = max(self.length, other.length)
        self._set(
            _copy_right_aligned([self._k[:, :, : self.length], other._k[:, :, : other.length]], width),
            _copy_right_aligned([self._v[:, :, : self.length], other._v[:, :, : other.length]], width),
            width,
        )


def _copy_right_aligned(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    """One new buffer holding ``parts`` stacked by row, each ending at column ``width``."""
    first = parts[0]
    rows = sum(p.shape[0] for p in parts)
    out = first.new_zeros((rows, first.shape[1], _capacity(width), first.shape[3]))
    at = 0
    for part in parts:
        out[at : at + part.shape[0], :, width - part.shape[-2] : width] = part
        at += part.shape[0]
    return out


def new_cache(num_layers: int) -> DynamicCache:
    """A transformers cache (what the model's forward expects) made of growable layers."""
    cache = DynamicCache()
    cache.layers = [GrowableLayer() for _ in range(num_layers)]
    return cache


def layers_of(cache: DynamicCache) -> list[GrowableLayer]:
    return cache.layers  # type: ignore[return-value]


def check_supported(model: torch.nn.Module) -> int:
    """Number of cache layers, or a clear error for models whose cache is not plain full attention.

    Sliding-window, linear-attention and quantised caches need their own batch
    operations; for those, serve one request at a time is not offered silently:
    the replica refuses to start and says why.
    """
    config = model.config.get_text_config(decoder=True)
    reference = DynamicCache(config=config)
    kinds = {type(layer).__name__ for layer in reference.layers}
    if kinds and kinds != {"DynamicLayer"}:
        raise FailedPrecondition(
            f"model {config.model_type!r} uses cache layers {sorted(kinds)}; ragrail's continuous batching "
            "supports models with full-attention KV caches (Llama, Mistral without sliding window, Qwen2, GPT-2, ...)"
        )
    return int(config.num_hidden_layers)
