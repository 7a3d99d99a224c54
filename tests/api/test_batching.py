"""Which job the GPU worker draws next (api.batching): the oldest, unless a later one can
use the weights already loaded, and then never more than MAX_BYPASS times past any job.
The pure rule here; the scheduler driving a swapping engine in test_scheduler.py."""

from __future__ import annotations

from dataclasses import dataclass

from text2img.api.batching import MAX_BYPASS, next_head


@dataclass
class W:
    name: str
    weights: str | None
    bypassed: int = 0


def key(w: W) -> str | None:
    return w.weights


def names(jobs: list[W]) -> list[str]:
    return [j.name for j in jobs]


def test_the_oldest_goes_first_when_nothing_would_be_swapped() -> None:
    a, b = W("a", "8 steps"), W("b", "4 steps")
    assert next_head([a, b], None, key) == (a, [])  # nothing loaded yet
    assert next_head([a, b], "8 steps", key) == (a, [])  # a uses what is loaded
    c, d = W("c", None), W("d", None)  # an engine without swaps
    assert next_head([c, d], "x", key) == (c, [])


def test_a_later_job_on_the_loaded_weights_goes_ahead() -> None:
    a, b, c, d = W("a", "8"), W("b", "2"), W("c", "4"), W("d", "2")
    head, passed = next_head([a, b, c, d], "4", key)
    assert head is c
    assert names(passed) == ["a", "b"]  # only the older ones it passes
    assert next_head([a, b], "4", key) == (a, [])  # nobody on "4": the oldest, swapped to


def test_no_job_is_passed_over_more_than_max_bypass_times() -> None:
    assert MAX_BYPASS == 2
    a = W("a", "8", bypassed=MAX_BYPASS)
    b, c = W("b", "8"), W("c", "4")
    assert next_head([a, b, c], "4", key) == (a, [])  # a has waited long enough
    a.bypassed = MAX_BYPASS - 1
    head, passed = next_head([a, b, c], "4", key)
    assert head is c
    assert names(passed) == ["a", "b"]
    b.bypassed = MAX_BYPASS  # the limit of any job passed counts, not only the oldest's
    assert next_head([a, b, c], "4", key) == (a, [])
