"""Several processes (``accelerate launch``, ``torchrun``): the world size, and rank 0's resume decision
sent to every rank."""

from __future__ import annotations

import os
from pathlib import Path


def world_size() -> int:
    """Processes of this run (``WORLD_SIZE``, set by ``accelerate launch`` and ``torchrun``; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def broadcast_checkpoint(ckpt: Path | None, problem: str | None = None) -> tuple[Path | None, str | None]:
    """Rank 0's decision (the checkpoint to resume, or why the run may not start), sent to every rank."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        from accelerate import PartialState

        PartialState()  # initialises the process group from the launcher's environment
    box = [str(ckpt) if ckpt is not None else None, problem]
    dist.broadcast_object_list(box, src=0)
    return (Path(box[0]) if box[0] is not None else None), box[1]
