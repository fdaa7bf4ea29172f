"""Seed streams (docs/design/CONTRACTS.md section 4).

``seed`` feeds ``numpy.random.SeedSequence(seed).spawn(6)``; each child seeds one independent stream:
init, split, data order/augmentation, criterion, shuffle, reinit. The library never seeds globally;
it draws from its own ``torch.Generator`` objects.
"""

from __future__ import annotations

import numpy as np
import torch

STREAMS = ("init", "split", "data", "criterion", "shuffle", "reinit")


def stream_seed(seed: int, stream: str) -> int:
    """The 63-bit integer seed of one named stream of ``seed``."""
    if stream not in STREAMS:
        raise ValueError(f"unknown seed stream {stream!r}; choose one of: {', '.join(STREAMS)}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    child = np.random.SeedSequence(int(seed)).spawn(len(STREAMS))[STREAMS.index(stream)]
    return int(child.generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def generator(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` for one named stream of ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(stream_seed(seed, stream))
    return g
