"""Guards around the training loop: Ctrl-C / SIGTERM stop at a step boundary, out-of-memory advice.

A signal never interrupts an optimizer step half-way: the handler only raises a flag, the loop looks
at it between steps (every process agrees on it), saves a resumable checkpoint and says how to resume.
A second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import torch

from sentune.errors import OutOfMemory, SentuneError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what schedulers (SLURM, k8s) send before a kill


class StopRequest:
    """While active, SIGINT/SIGTERM set `requested` instead of raising; a second signal raises at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def agreed(flag: bool, accelerator) -> bool:
    """True when `flag` is true on any process, so every process takes the same branch (no hang in DDP)."""
    if accelerator.num_processes == 1:
        return flag
    votes = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(votes, reduction="sum").item() > 0)


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def out_of_memory_message(batch_size: int, grad_accum: int, max_length: int) -> str:
    """Halve the batch and double the accumulation: the same effective batch in less memory."""
    if batch_size > 1:
        smaller = batch_size // 2
        accum = -(-batch_size * grad_accum // smaller)
        advice = (f"try --batch-size {smaller} --grad-accum {accum} (the same {batch_size * grad_accum} "
                  f"examples per optimizer step), or a smaller --max-length")
    else:
        advice = "try a smaller --max-length or a larger --freeze-layers"
    return (f"out of memory with --batch-size {batch_size} --grad-accum {grad_accum} "
            f"--max-length {max_length}; {advice}")


@contextlib.contextmanager
def out_of_memory_hint(batch_size: int, grad_accum: int, max_length: int) -> Iterator[None]:
    """Turn an out-of-memory error anywhere inside into one `OutOfMemory` line with the flags to change."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise OutOfMemory(out_of_memory_message(batch_size, grad_accum, max_length)) from None


def finite_or_skip(p, loss: torch.Tensor, epoch: int, step: int) -> bool:
    """A non-finite loss stops the run (best/ and the last checkpoint stay) or, with --on-nan skip, skips the step.

    Every process decides alike (one of them seeing a NaN is enough), so DDP never waits for a missing backward.
    """
    if not agreed(not torch.isfinite(loss).item(), p.accelerator):
        return True
    if p.cfg.train.on_nan == "skip":
        p.log(f"warning: non-finite loss at epoch {epoch} step {step}; step skipped")
        p.optimizer.zero_grad(set_to_none=True)
        return False
    raise SentuneError(f"non-finite loss at epoch {epoch} step {step}; the last good weights are in "
                       f"{p.run_dir / 'best'} and the last checkpoint in {p.run_dir / 'checkpoint'}. "
                       "Try a lower learning rate or --precision fp32, or continue with "
                       f"`sentune train --resume {p.run_dir} --on-nan skip`")


def interrupted(p, state) -> None:
    """After a stop request: the checkpoint is saved; say where and how to continue, then stop."""
    where = f"epoch {state.epoch + 1}, step {state.step}" if state.step else f"the end of epoch {state.epoch}"
    p.log(f"Interrupted: a resumable checkpoint was saved at {where}.")
    n = p.accelerator.num_processes
    launcher = f" (launched as before, with {n} processes, e.g. torchrun --nproc_per_node {n} -m sentune ...)"
    p.log(f"Resume with: sentune train --resume {p.run_dir}" + (launcher if n > 1 else ""))
    raise KeyboardInterrupt
