"""Process-group context for the training loop (single process until issue #6 lands).

The loop talks to torch.distributed only through ``DistContext``; this frame is
the single-process behaviour every method must keep when world_size == 1.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass


@dataclass
class DistContext:
    """Rank and world of this process; helpers the training loop calls."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "none"  # "none" | "ddp" | "fsdp"

    @property
    def is_main(self) -> bool:
        """Only the main process logs, writes metrics and checkpoints."""
        return self.rank == 0

    def wrap(self, model):
        """Wrap the model for the strategy (identity in a single process)."""
        return model

    def unwrap(self, model):
        """The plain model under any wrapper (for save_pretrained)."""
        return model

    def no_sync(self, model, sync: bool):
        """Context for one micro-step: gradients are all-reduced only when ``sync`` is true."""
        return contextlib.nullcontext()

    def shard(self, n_items: int) -> range:
        """Indices of the items this rank reads (disjoint across ranks)."""
        return range(n_items)

    def all_reduce_mean(self, value: float) -> float:
        """Mean of a float over ranks (identity in a single process)."""
        return value

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""

    def close(self) -> None:
        """Tear the process group down (no-op in a single process)."""


def init_distributed(strategy: str | None = None, device_type: str = "cpu") -> DistContext:
    """Read torchrun's environment and set up the process group; single process for now."""
    return DistContext()
