"""Seeded CPU generators, one per image, and their states as they travel with a Latent.

Image i of a batch draws from its own generator seeded `seed + i` (the diffusers guide's
recipe), so any image can be re-made alone; the states go along with the samples so the
next node continues the same streams.
"""

from __future__ import annotations

from collections.abc import Sequence

from nodes.lazy import lazy_module

torch = lazy_module("torch")


def new_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded independently (diffusers' `get_inputs`)."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def restore_generators(states: Sequence[torch.Tensor]) -> list[torch.Generator]:
    gens = []
    for state in states:
        g = torch.Generator("cpu")
        g.set_state(state)
        gens.append(g)
    return gens


def generator_states(gens: Sequence[torch.Generator]) -> tuple[torch.Tensor, ...]:
    return tuple(g.get_state() for g in gens)
