"""Replay memories that keep raw samples in their native dtype (uint8 images stay uint8).

Two insertion policies over one storage layout (a dict of tensors with `capacity` rows: x, y, t and
any per-sample extras such as DER's logits at insertion):

- `ReservoirBuffer`: Vitter's Algorithm R, as in Chaudhry et al. 2019 "On Tiny Episodic Memories". The
  n-th sample of the stream (0-based) is stored if n < capacity, otherwise it replaces slot j with
  j ~ U{0..n} when j < capacity. After any number of insertions the buffer is a uniform sample of
  everything seen.
- `ClassBalancedBuffer`: every class seen so far gets an equal share of the memory. A sample of a class
  below its share is stored (evicting a random sample of the currently largest class when full); a
  sample of a class at its share either replaces a random sample of its own class with probability
  (stored_c / seen_c) -- class-balanced reservoir sampling, Chrysakis & Moens, ICML 2020 (CBRS) -- or
  is dropped (`within_class="drop"`: GDumb's greedy sampler, Prabhu et al. ECCV 2020).

Both report their footprint (`state()`) for result.json.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from clbench.stream import Batch


class Storage:
    """Fixed-capacity tensor storage; subclasses decide which slot each offered sample goes to."""

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

    def _write(self, fields: dict[str, Tensor], pos: Tensor, slot: Tensor) -> None:
        if not self.data:
            self._allocate(fields)
        if len(pos) == 0:
            return
        pos, slot = pos.to(fields["y"].device), slot.to(self.device)
        for name, v in fields.items():
            self.data[name][slot] = v[pos].detach().to(self.device, self.data[name].dtype)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
        """n stored samples drawn uniformly without replacement (all of them if fewer are stored)."""
        g = generator or self.generator
        idx = torch.randperm(self.size, generator=g)[:n].to(self.device)
        return {name: v[idx] for name, v in self.data.items()}

    def contents(self) -> dict[str, Tensor]:
        """Every stored sample (views of the filled slots)."""
        return {name: v[:self.size] for name, v in self.data.items()}

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.data.values())

    def state_dict(self) -> dict:
        """Everything needed to resume (the generator is the strategy's and is saved with it)."""
        return {"seen": self.seen, "size": self.size, "data": {k: v.clone() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.seen, self.size = int(state["seen"]), int(state["size"])
        self.data = {k: v.to(self.device) for k, v in state["data"].items()}

    def state(self) -> dict:
        """Footprint for result.json."""
        return {"policy": self.policy, "capacity": self.capacity, "size": self.size, "seen": self.seen,
                "bytes": self.nbytes(),
                "dtype": str(self.data["x"].dtype).replace("torch.", "") if self.data else None}


class ReservoirBuffer(Storage):
    policy = "reservoir"

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
        pos, slot = self.slots_for(len(batch.y))
        self.seen += len(batch.y)
        self._write(fields, pos, slot)
        self.size = min(self.seen, self.capacity)


class ClassBalancedBuffer(Storage):
    """Equal memory share per seen class; `within_class` = "reservoir" (CBRS) or "drop" (GDumb)."""

    def __init__(self, capacity: int, device: torch.device, generator: torch.Generator,
                 within_class: str = "reservoir"):
        super().__init__(capacity, device, generator)
        if within_class not in ("reservoir", "drop"):
            raise ValueError(f"within_class must be 'reservoir' or 'drop', got {within_class!r}")
        self.within_class = within_class
        self.policy = "class_balanced" if within_class == "reservoir" else "class_balanced_greedy"
        self.labels = torch.full((self.capacity,), -1, dtype=torch.long)  # class of each slot (CPU)
        self.seen_per_class: dict[int, int] = {}

    def counts(self) -> dict[int, int]:
        ids, n = torch.unique(self.labels[self.labels >= 0], return_counts=True)
        return {int(c): int(k) for c, k in zip(ids.tolist(), n.tolist())}

    def _slot_for(self, c: int) -> int:
        """The slot for one sample of class c, or -1 to drop it (decided sequentially)."""
        self.seen_per_class[c] = self.seen_per_class.get(c, 0) + 1
        if self.size < self.capacity:                       # free slot
            self.size += 1
            return self.size - 1
        stored = (self.labels == c)
        n_c = int(stored.sum())
        share = self.capacity // len(self.seen_per_class)
        if n_c < share:                                     # class under its share: evict from the largest
            counts = torch.bincount(self.labels, minlength=c + 1)
            largest = (counts == counts.max()).nonzero().squeeze(1)
            victim_cls = int(largest[torch.randint(len(largest), (1,), generator=self.generator)])
            victims = (self.labels == victim_cls).nonzero().squeeze(1)
            return int(victims[torch.randint(len(victims), (1,), generator=self.generator)])
        if self.within_class == "drop":
            return -1
        # reservoir within the class: keep with probability n_c / seen_c, replacing one of its samples
        if float(torch.rand(1, generator=self.generator, dtype=torch.float64)) * self.seen_per_class[c] < n_c:
            own = stored.nonzero().squeeze(1)
            return int(own[torch.randint(len(own), (1,), generator=self.generator)])
        return -1

    def add(self, batch: Batch, **extras: Tensor) -> None:
        if self.capacity == 0:
            self.seen += len(batch.y)
            return
        fields = {"x": batch.x, "y": batch.y, "t": batch.t, **extras}
        last: dict[int, int] = {}                           # slot -> batch position (last writer wins)
        for p, c in enumerate(batch.y.tolist()):
            s = self._slot_for(int(c))
            if s >= 0:
                self.labels[s] = int(c)
                last[s] = p
        self.seen += len(batch.y)
        slot = torch.tensor(list(last.keys()), dtype=torch.long)
        pos = torch.tensor(list(last.values()), dtype=torch.long)
        self._write(fields, pos, slot)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "labels": self.labels.clone(),
                "seen_per_class": {int(c): int(n) for c, n in self.seen_per_class.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.labels = state["labels"].clone()
        self.seen_per_class = {int(c): int(n) for c, n in state["seen_per_class"].items()}

    def state(self) -> dict:
        return {**super().state(), "per_class": {str(c): n for c, n in sorted(self.counts().items())}}


BUFFERS = {"reservoir": ReservoirBuffer, "class_balanced": ClassBalancedBuffer}


def make_buffer(kind: str, capacity, device: torch.device, generator: torch.Generator, minimum: int = 0,
                **options) -> Storage:
    """A buffer by name, with config errors that name the key (`strategy.buffer`, `strategy.buffer_size`)."""
    from clbench.errors import ConfigError, bad_value
    if kind not in BUFFERS:
        raise bad_value("strategy.buffer", f"{kind!r}; valid choices: {', '.join(BUFFERS)}")
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < minimum:
        raise bad_value("strategy.buffer_size", f"expected an integer >= {minimum}, got {capacity!r}")
    return BUFFERS[kind](capacity, device, generator, **options)
