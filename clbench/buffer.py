"""Replay memory: a fixed-capacity reservoir of raw samples in their native dtype (uint8 images stay uint8).

Reservoir sampling (Vitter's Algorithm R, as in Chaudhry et al. 2019 "On Tiny Episodic Memories"): the
n-th sample of the stream (0-based) is stored if n < capacity, otherwise it replaces slot j with
j ~ U{0..n} when j < capacity. After any number of insertions the buffer is a uniform sample of
everything seen. Extra per-sample tensors (e.g. DER's logits at insertion) are stored alongside.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from clbench.stream import Batch


class ReservoirBuffer:
    def __init__(self, capacity: int, device: torch.device, generator: torch.Generator):
        if capacity < 0:
            raise ValueError(f"buffer capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.device = device
        self.generator = generator
        self.seen = 0                      # samples offered so far
        self.size = 0                      # slots filled
        self.data: dict[str, Tensor] = {}  # x, y, t and any extras, each with `capacity` rows

    def __len__(self) -> int:
        return self.size

    def _allocate(self, fields: dict[str, Tensor]) -> None:
        for name, v in fields.items():
            self.data[name] = torch.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype, device=self.device)

    def slots_for(self, n: int) -> tuple[Tensor, Tensor]:
        """Reservoir decisions for the next n stream samples: (positions in the batch, buffer slots).

        When two samples of one batch draw the same slot the later one wins, as in sequential insertion.
        """
        ranks = torch.arange(self.seen, self.seen + n, dtype=torch.float64)
        j = torch.floor(torch.rand(n, generator=self.generator, dtype=torch.float64) * (ranks + 1)).long()
        slot = torch.where(ranks < self.capacity, ranks.long(), j)
        keep = slot < self.capacity
        pos, slot = torch.nonzero(keep).squeeze(1), slot[keep]
        if len(slot) > 1:  # last writer wins
            last = {int(s): int(p) for p, s in zip(pos.tolist(), slot.tolist())}
            slot = torch.tensor(list(last.keys()), dtype=torch.long)
            pos = torch.tensor(list(last.values()), dtype=torch.long)
        return pos, slot

    def add(self, batch: Batch, **extras: Tensor) -> None:
        """Offer a batch of stream samples (and per-sample extras) to the reservoir."""
        if self.capacity == 0:
            self.seen += len(batch.y)
            return
        fields = {"x": batch.x, "y": batch.y, "t": batch.t, **extras}
        if not self.data:
            self._allocate(fields)
        pos, slot = self.slots_for(len(batch.y))
        self.seen += len(batch.y)
        if len(pos) == 0:
            return
        pos, slot = pos.to(self.device), slot.to(self.device)
        for name, v in fields.items():
            self.data[name][slot] = v[pos].detach().to(self.data[name].dtype)
        self.size = min(self.seen, self.capacity)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
        """n stored samples drawn uniformly without replacement (all of them if fewer are stored)."""
        g = generator or self.generator
        idx = torch.randperm(self.size, generator=g)[:n].to(self.device)
        return {name: v[idx] for name, v in self.data.items()}

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.data.values())

    def state(self) -> dict:
        """Footprint for result.json."""
        return {"capacity": self.capacity, "size": self.size, "seen": self.seen, "bytes": self.nbytes(),
                "dtype": str(self.data["x"].dtype).replace("torch.", "") if self.data else None}
