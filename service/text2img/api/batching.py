"""Which waiting job the GPU worker draws next: the oldest, unless that would swap the
engine's weights while a later job could use the weights already loaded.

SDXL-Lightning keeps one distilled UNet per step count; a deployment serving 2, 4 and 8
steps swaps the UNet in place (~5 GB read and hashed) whenever the next batch asks for
another count. Strict first-come order with requests alternating between counts swaps on
every batch. So a job needing the loaded weights may go ahead of older ones that need
others, but no job is passed over more than `MAX_BYPASS` times: its wait grows by at most
that many batches. Pure: no threads, no engine, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Protocol, TypeVar

MAX_BYPASS = 2  # batches a waiting job may be passed over to spare a weight swap


class Waiting(Protocol):
    bypassed: int  # times a later job went first


W = TypeVar("W", bound=Waiting)


def next_head(
    queue: Iterable[W], loaded: Hashable | None, key: Callable[[W], Hashable | None]
) -> tuple[W, list[W]]:
    """(the job whose settings the next batch uses, the older jobs it passes over).

    `queue` is oldest first and not empty; `loaded` is the weights key of the last batch
    (None before the first); `key` gives a job's weights key (None: any weights do).
    The caller counts a pass-over (`bypassed += 1`) only when it takes the batch.
    """
    first = next(iter(queue))
    wanted = key(first)
    if loaded is None or wanted is None or wanted == loaded:
        return first, []
    ahead: list[W] = []
    for job in queue:
        if key(job) == loaded:
            if any(j.bypassed >= MAX_BYPASS for j in ahead):
                return first, []
            return job, ahead
        ahead.append(job)
    return first, []
