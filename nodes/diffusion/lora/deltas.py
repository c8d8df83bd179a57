"""Weight deltas read from LoRA-family files, one class per published decomposition.

Each delta is the *full* change of one parameter, already scaled by the file's own
alpha / rank factor, but not by the user's strength: applying it is ``W + strength * delta``.
Deltas hold the file's tensors as they were stored (usually on the CPU, in the file's dtype)
and rebuild the dense delta on demand in float32, so a patcher can cache or drop them freely.

The formulas follow the papers and the LyCORIS / kohya documentation:

- LoRA (Hu et al. 2021), LoCon for convolutions: ``up @ down``; with a Tucker core
  (``lora_mid``) the conv kernel is ``up x1 mid x2 down`` (1x1 down, kxk core, 1x1 up).
- LoHa (FedPara, Hyeon-Woo et al. 2022): the Hadamard product of two low-rank products.
- LoKr (LyCORIS): the Kronecker product of two factors, either of which may be low rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Delta(Protocol):
    """What every delta offers the code that applies it."""

    def weight(self, shape: torch.Size, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor: ...

    def tensors(self) -> Iterator[torch.Tensor]: ...

    def nbytes(self) -> int: ...

    @property
    def shape(self) -> torch.Size: ...


def _f32(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device=device, dtype=torch.float32)


def _finish(delta: torch.Tensor, scale: float, shape: torch.Size,
            dtype: torch.dtype) -> torch.Tensor:
    """Scale in float32, reshape to the target parameter's shape, cast last."""
    if delta.numel() != math.prod(shape):
        raise ValueError(f"a delta of shape {tuple(delta.shape)} cannot be reshaped to "
                         f"the parameter's shape {tuple(shape)}")
    return (delta * scale).reshape(shape).to(dtype)


def _nbytes(tensors: Iterator[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _rank_scale(alpha: float | None, rank: int) -> float:
    """alpha / rank, the factor that keeps a LoRA's magnitude independent of its rank;
    1.0 when the file stores no alpha (the trainers' default of alpha = rank)."""
    return 1.0 if alpha is None else float(alpha) / rank


def _tucker(core: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Rebuild a conv kernel from a Tucker core ``[r_up, r_down, kh, kw]`` and the two
    mode factors ``down [r_down, in]`` and ``up [r_up, out]``: ``W[o, i] = up^T core down``."""
    return torch.einsum("abhw,bi,ao->oihw", core, down, up)


@dataclass(frozen=True, eq=False)
class LoraDelta:
    """Plain LoRA / LoCon: ``up @ down`` (conv: down ``[r, in, kh, kw]``, up ``[out, r, 1, 1]``).

    With ``mid`` (LyCORIS' Tucker-decomposed LoCon) down is a 1x1 ``[r, in, 1, 1]``, mid the
    ``[r, r, kh, kw]`` core and up a 1x1 ``[out, r, 1, 1]``. Scale: alpha / rank with
    rank = ``down.shape[0]``.
    """

    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None = None
    mid: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def shape(self) -> torch.Size:
        """The delta's natural shape: ``[out, in]`` or ``[out, in, kh, kw]``."""
        out, inn = int(self.up.shape[0]), int(self.down.shape[1])
        if self.mid is not None:
            return torch.Size((out, inn, *self.mid.shape[2:]))
        return torch.Size((out, inn, *self.down.shape[2:]))

    def tensors(self) -> Iterator[torch.Tensor]:
        yield self.up
        yield self.down
        if self.mid is not None:
            yield self.mid

    def nbytes(self) -> int:
        return _nbytes(self.tensors())

    def weight(self, shape: torch.Size, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
        up = _f32(self.up, device).flatten(1)
        down = _f32(self.down, device)
        if self.mid is None:
            delta = (up @ down.flatten(1)).reshape(self.shape)
        else:
            delta = _tucker(_f32(self.mid, device), down.flatten(1), up.t())
        return _finish(delta, _rank_scale(self.alpha, self.rank), shape, dtype)


@dataclass(frozen=True, eq=False)
class LohaDelta:
    """LoHa: ``(w1_a @ w1_b) * (w2_a @ w2_b)``, scaled by alpha / rank (rank =
    ``w1_b.shape[0]``).

    Convolutions store ``w*_b`` flattened as ``[r, in * kh * kw]``. With Tucker cores
    (``t1``, ``t2``: ``[r, r, kh, kw]``) the factors are mode matrices instead:
    ``w*_a [r, out]``, ``w*_b [r, in]``, and each side is rebuilt as a Tucker product.
    """

    w1_a: torch.Tensor
    w1_b: torch.Tensor
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    alpha: float | None = None
    t1: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.t1 is None) != (self.t2 is None):
            raise ValueError("a LoHa with Tucker cores needs both hada_t1 and hada_t2")

    @property
    def rank(self) -> int:
        return int(self.w1_b.shape[0])

    @property
    def shape(self) -> torch.Size:
        if self.t1 is not None:
            return torch.Size((int(self.w1_a.shape[1]), int(self.w1_b.shape[1]),
                               *self.t1.shape[2:]))
        return torch.Size((int(self.w1_a.shape[0]), int(self.w1_b.shape[1])))

    def tensors(self) -> Iterator[torch.Tensor]:
        yield from (self.w1_a, self.w1_b, self.w2_a, self.w2_b)
        if self.t1 is not None and self.t2 is not None:
            yield from (self.t1, self.t2)

    def nbytes(self) -> int:
        return _nbytes(self.tensors())

    def _side(self, a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | None,
              device: torch.device) -> torch.Tensor:
        a, b = _f32(a, device), _f32(b, device)
        if t is None:
            return a @ b
        return _tucker(_f32(t, device), b, a)

    def weight(self, shape: torch.Size, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
        delta = (self._side(self.w1_a, self.w1_b, self.t1, device)
                 * self._side(self.w2_a, self.w2_b, self.t2, device))
        return _finish(delta, _rank_scale(self.alpha, self.rank), shape, dtype)


@dataclass(frozen=True, eq=False)
class LokrDelta:
    """LoKr: ``kron(w1, w2)``; each factor is stored whole (``lokr_w1``, ``lokr_w2``) or as
    a low-rank product (``lokr_w*_a @ lokr_w*_b``, or for w2 a Tucker product with
    ``lokr_t2``).

    LyCORIS scales by alpha / rank only when some factor is decomposed (rank = the
    decomposed factor's ``_b.shape[0]``, w1's when both are); two whole factors are the
    delta as trained, scale 1. For convolutions w2 carries the kernel (``[b, d, kh, kw]``,
    or flattened ``[b, d * kh * kw]``) and w1 is ``[a, c]``.
    """

    w1: torch.Tensor | None = None
    w1_a: torch.Tensor | None = None
    w1_b: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w2_a: torch.Tensor | None = None
    w2_b: torch.Tensor | None = None
    t2: torch.Tensor | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        if (self.w1 is None) == (self.w1_a is None or self.w1_b is None):
            raise ValueError("a LoKr needs lokr_w1 or both lokr_w1_a and lokr_w1_b")
        if (self.w2 is None) == (self.w2_a is None or self.w2_b is None):
            raise ValueError("a LoKr needs lokr_w2 or both lokr_w2_a and lokr_w2_b")
        if self.t2 is not None and self.w2 is not None:
            raise ValueError("lokr_t2 needs lokr_w2_a and lokr_w2_b, not lokr_w2")

    @property
    def rank(self) -> int | None:
        """The rank of the decomposed factor, None when both are whole."""
        if self.w1_b is not None:
            return int(self.w1_b.shape[0])
        if self.w2_b is not None:
            return int(self.w2_b.shape[0])
        return None

    def _w1_shape(self) -> tuple[int, int]:
        if self.w1 is not None:
            return int(self.w1.shape[0]), int(self.w1.shape[1])
        assert self.w1_a is not None and self.w1_b is not None
        return int(self.w1_a.shape[0]), int(self.w1_b.shape[1])

    def _w2_shape(self) -> tuple[int, ...]:
        if self.w2 is not None:
            return tuple(int(s) for s in self.w2.shape)
        assert self.w2_a is not None and self.w2_b is not None
        if self.t2 is not None:
            return (int(self.w2_a.shape[1]), int(self.w2_b.shape[1]), *self.t2.shape[2:])
        return int(self.w2_a.shape[0]), int(self.w2_b.shape[1])

    @property
    def shape(self) -> torch.Size:
        (a, c), w2 = self._w1_shape(), self._w2_shape()
        return torch.Size((a * w2[0], c * w2[1], *w2[2:]))

    def tensors(self) -> Iterator[torch.Tensor]:
        for t in (self.w1, self.w1_a, self.w1_b, self.w2, self.w2_a, self.w2_b, self.t2):
            if t is not None:
                yield t

    def nbytes(self) -> int:
        return _nbytes(self.tensors())

    def _factor1(self, device: torch.device) -> torch.Tensor:
        if self.w1 is not None:
            return _f32(self.w1, device)
        assert self.w1_a is not None and self.w1_b is not None
        return _f32(self.w1_a, device) @ _f32(self.w1_b, device)

    def _factor2(self, device: torch.device) -> torch.Tensor:
        if self.w2 is not None:
            return _f32(self.w2, device)
        assert self.w2_a is not None and self.w2_b is not None
        a, b = _f32(self.w2_a, device), _f32(self.w2_b, device)
        if self.t2 is not None:
            return _tucker(_f32(self.t2, device), b, a)
        return a @ b

    def weight(self, shape: torch.Size, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
        w1, w2 = self._factor1(device), self._factor2(device)
        while w1.ndim < w2.ndim:
            w1 = w1.unsqueeze(-1)
        # A flattened conv w2 gives [a*b, c*d*kh*kw], the same memory order as the 4-D
        # product reshaped, so reshaping to the parameter's shape is exact either way.
        rank = self.rank
        scale = 1.0 if rank is None else _rank_scale(self.alpha, rank)
        return _finish(torch.kron(w1.contiguous(), w2.contiguous()), scale, shape, dtype)


@dataclass(frozen=True, eq=False)
class DiffDelta:
    """A stored full difference (LyCORIS "full" / ``diff``, ``diff_b`` for a bias)."""

    diff: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.diff.shape

    def tensors(self) -> Iterator[torch.Tensor]:
        yield self.diff

    def nbytes(self) -> int:
        return _nbytes(self.tensors())

    def weight(self, shape: torch.Size, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
        return _finish(_f32(self.diff, device), 1.0, shape, dtype)


@dataclass(frozen=True, eq=False)
class SumDelta:
    """Several file entries patching one parameter (rare: e.g. a LoRA and a ``diff`` for
    the same layer): their deltas add."""

    parts: tuple[Delta, ...]

    @property
    def shape(self) -> torch.Size:
        return self.parts[0].shape

    def tensors(self) -> Iterator[torch.Tensor]:
        for part in self.parts:
            yield from part.tensors()

    def nbytes(self) -> int:
        return sum(part.nbytes() for part in self.parts)

    def weight(self, shape: torch.Size, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
        total = self.parts[0].weight(shape, torch.float32, device)
        for part in self.parts[1:]:
            total = total + part.weight(shape, torch.float32, device)
        return total.to(dtype)
