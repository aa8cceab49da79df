"""`sentune predict` under `torchrun` / `accelerate launch`: every process classifies a share, one writes.

All processes stream the same input and walk it chunk by chunk in step. For each chunk, process r classifies
texts r, r + n, r + 2n, ... (n processes) on its own device, the shares are gathered, and every process holds
the chunk's predictions in input order; only the main process writes them. So the output is one file, in
input order, the same as a single process writes, and memory stays one chunk per process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from sentune.errors import ConfigError


def launched_processes() -> int:
    """How many processes the launcher started (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class ShardedClassifier:
    """A `Classifier` whose `predict` splits each call across the launched processes and gathers the results."""

    def __init__(self, classifier, rank: int, world_size: int):
        self.classifier, self.rank, self.world_size = classifier, rank, world_size

    def __getattr__(self, name: str):  # labels, name, max_length, backend, ... of the wrapped classifier
        return getattr(self.classifier, name)

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[dict]:
        import torch.distributed as dist

        mine = self.classifier.predict(list(texts)[self.rank::self.world_size], batch_size)
        shares: list = [None] * self.world_size
        dist.all_gather_object(shares, mine)
        out: list = [None] * len(texts)
        for rank, share in enumerate(shares):
            out[rank::self.world_size] = share
        return out


def load_for_launch(load: Callable[[str], object], input_path: str | None, device: str = "auto"):
    """(classifier, writes): `load(device)` on this process's device, sharded when launched on several."""
    if launched_processes() == 1:
        return load(device), True
    if input_path == "-":
        raise ConfigError("with several processes, read an --input FILE (stdin goes to one process only)")
    from accelerate import PartialState

    from sentune.inference.runners import pick_device

    # joins the launcher's process group: nccl on GPUs; elsewhere gloo on the CPU, which it must be told (else
    # it sees one process)
    state = PartialState(cpu=not pick_device(device).startswith("cuda"))
    own = str(state.device) if device == "auto" else device
    classifier = load("cpu" if own.startswith("cpu") else own)
    return ShardedClassifier(classifier, state.process_index, state.num_processes), state.is_main_process
