"""One random generator per image, derived from (seed, image key) like JAX's fold_in.

    gens = image_generators(0, ["channel(features.4,5)", "channel(features.4,6)"])
    u = uniform(gens, 4)          # (2, 4): row b comes from gens[b] only

An image's key names what it shows (layer and channel, or class), so its random start and its
random transforms are the same whatever the batch size or its place in the batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

Generators = Sequence[torch.Generator] | torch.Generator


def image_seed(seed: int, key: str) -> int:
    """A stable 63-bit seed from (seed, key): the same on every machine and Python run."""
    h = hashlib.blake2b(f"{int(seed)}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


def image_generators(seed: int, keys: Sequence[str]) -> list[torch.Generator]:
    """One CPU generator per key."""
    return [torch.Generator().manual_seed(image_seed(seed, k)) for k in keys]


def per_image(gens: Generators, b: int) -> list[torch.Generator]:
    """A list of b generators: a list as is (its length must be b), one generator used for every image."""
    if isinstance(gens, torch.Generator):
        return [gens] * b
    gens = list(gens)
    if len(gens) != b:
        raise ValueError(f"{len(gens)} generators for a batch of {b} images")
    return gens


def uniform(gens: Generators, n: int, b: int) -> Tensor:
    """(b, n) uniform [0, 1) numbers on the CPU, row i drawn from image i's generator only."""
    return torch.stack([torch.rand(n, generator=g) for g in per_image(gens, b)])


def normal(gens: Generators, shape: Sequence[int], b: int) -> Tensor:
    """(b, *shape) standard normal numbers, image i's slice from image i's generator only."""
    return torch.stack([torch.randn(*shape, generator=g) for g in per_image(gens, b)])
