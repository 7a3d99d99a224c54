"""The batching queue on its own, with the fake "swatch" engine (no torch, no HTTP, fast):
order, batching of compatible jobs, cancellation, out-of-memory halving, time limits,
encoding off the worker thread, shutdown."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from PIL import Image

from tests.fakes.engine import SWATCH, SwatchEngine
from text2img.api.failures import job_error
from text2img.api.jobs import FailureKind, Job, JobState
from text2img.api.scheduler import BatchRecord, QueueFull, Scheduler, SchedulerStopped
from text2img.engines.base import BadOutput, InvalidSetting


def encode(job: Job, image: Image.Image) -> bytes:
    return f"{job.prompt}|{image.getpixel((0, 0))}|{threading.current_thread().name}".encode()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


def job(prompt: str = "a", n: int = 1, timeout_s: float = 30.0, **options: Any) -> Job:
    return Job(
        prompt=prompt,
        settings=SWATCH.settings(**options),
        seeds=[10 * len(prompt) + i for i in range(n)],
        timeout_s=timeout_s,
    )


@pytest.fixture
def make() -> Iterator[Callable[..., tuple[Scheduler, SwatchEngine]]]:
    made: list[Scheduler] = []

    def build(**kw: Any) -> tuple[Scheduler, SwatchEngine]:
        engine = kw.pop("engine", None) or SwatchEngine()
        kw.setdefault("queue_limit", 8)
        kw.setdefault("batch_window_s", 0.0)
        scheduler = Scheduler(engine, encode=encode, **kw)
        made.append(scheduler)
        return scheduler, engine

    yield build
    for scheduler in made:
        scheduler.stop(5)


def held(make: Callable[..., tuple[Scheduler, SwatchEngine]], **kw: Any):
    """A started scheduler whose engine holds its first batch until `gate.set()`."""
    gate = threading.Event()
    scheduler, engine = make(engine=SwatchEngine(hold=gate), **kw)
    scheduler.start()
    return scheduler, engine, gate


def test_jobs_run_in_order_and_compatible_ones_share_a_batch(make):
    scheduler, engine, gate = held(make)
    first = job("first")
    scheduler.submit(first)
    engine.started.wait(5)
    later = [job("b", hue=10), job("c", n=2), job("d", hue=10), job("e")]
    for j in later:
        scheduler.submit(j)
    assert scheduler.queue_depth == 4
    assert [scheduler.queue_position(j) for j in later] == [0, 1, 2, 3]
    gate.set()
    wait_for(lambda: all(j.finished for j in later))
    prompts = [[r.prompt for r in batch] for batch in engine.batches]
    # the oldest waiting job leads; later jobs with equal settings join its batch
    assert prompts == [["first"], ["b", "d"], ["c", "c", "e"]]
    assert [j.state for j in later] == [JobState.SUCCEEDED] * 4
    # each image went through the encoder thread, under its own seed
    drawn = [SwatchEngine._draw(r, later[1].settings) for r in engine.batches[2][:2]]
    pixels = [d.image.getpixel((0, 0)) for d in drawn]
    assert pixels[0] != pixels[1]
    assert later[1].images == [f"c|{p}|text2img-encode_0".encode() for p in pixels]


def test_a_job_larger_than_a_batch_spreads_over_batches(make):
    scheduler, engine = make(max_batch=3)
    scheduler.start()
    big = job("big", n=7)
    scheduler.submit(big)
    wait_for(lambda: big.finished)
    assert [len(b) for b in engine.batches] == [3, 3, 1]
    assert [r.seed for b in engine.batches for r in b] == big.seeds
    assert big.state is JobState.SUCCEEDED
    assert all(big.images)


def test_full_queue_refuses_with_a_retry_after(make):
    scheduler, _ = make(queue_limit=2)
    scheduler.submit(job())
    scheduler.submit(job())
    with pytest.raises(QueueFull) as exc:
        scheduler.submit(job())
    assert exc.value.retry_after >= 10  # two batches waiting at the 10 s first guess


def test_a_weights_swap_is_left_out_of_the_retry_after_estimate(make):
    """SDXL's UNet swap takes seconds once; charging it to every waiting batch would tell
    refused clients to wait several times too long."""
    scheduler, engine = make(queue_limit=2, engine=SwatchEngine(setup_s=1.5))
    scheduler.start()
    first = job()
    scheduler.submit(first)
    wait_for(lambda: first.finished)
    engine.setup_s, engine.hold = 0.0, threading.Event()  # the next batch stays running
    running = job()
    scheduler.submit(running)
    wait_for(lambda: running.state is JobState.RUNNING)
    scheduler.submit(job())
    scheduler.submit(job())
    with pytest.raises(QueueFull) as exc:
        scheduler.submit(job())
    # 1.5 batches ahead at the measured sampling time (milliseconds), not at 1.5 s each
    assert exc.value.retry_after == 1
    engine.hold.set()


def test_cancelling_a_waiting_job_drops_it_and_a_running_one_stops(make):
    scheduler, engine, _gate = held(make)
    running, waiting = job("run", coats=5), job("wait")
    scheduler.submit(running)
    engine.started.wait(5)
    scheduler.submit(waiting)
    assert scheduler.cancel(waiting) is True  # dropped before it ran
    assert waiting.state is JobState.CANCELLED
    assert job_error(waiting) is None
    assert scheduler.cancel(running) is False  # stops before its next model call
    wait_for(lambda: running.finished)
    assert running.state is JobState.CANCELLED
    assert running.images == [None]
    assert [[r.prompt for r in b] for b in engine.batches] == [["run"]]


def test_out_of_memory_halves_the_batch_and_caps_later_ones(make):
    records: list[BatchRecord] = []
    scheduler, engine = make(engine=SwatchEngine(oom_above=1), on_batch=records.append)
    jobs = [job(p) for p in "abcd"]
    for j in jobs:
        scheduler.submit(j)
    scheduler.start()
    wait_for(lambda: all(j.finished for j in jobs))
    assert [len(b) for b in engine.batches] == [4, 2, 1, 1, 1, 1]
    assert scheduler.max_batch == 1
    assert [r.outcome for r in records] == ["oom", "oom", "ok", "ok", "ok", "ok"]
    assert all(j.state is JobState.SUCCEEDED for j in jobs)


def test_one_image_out_of_memory_fails_its_job_with_503(make):
    scheduler, _engine = make(engine=SwatchEngine(oom_above=0))
    scheduler.start()
    j = job()
    scheduler.submit(j)
    wait_for(lambda: j.finished)
    error = job_error(j)
    assert j.failure is not None
    assert j.failure.kind is FailureKind.OUT_OF_MEMORY
    assert error is not None
    assert (error.status, error.code) == (503, "gpu_out_of_memory")


@pytest.mark.parametrize(
    ("raised", "kind", "status", "code"),
    [
        (BadOutput("NaN: run `text2img download`"), FailureKind.BAD_OUTPUT, 500, "bad_output"),
        (InvalidSetting("hue", "hue is wrong"), FailureKind.INVALID, 400, "invalid_settings"),
        (RuntimeError("driver fell over"), FailureKind.INTERNAL, 500, "generation_failed"),
    ],
)
def test_engine_errors_fail_the_batch_and_the_worker_lives_on(make, raised, kind, status, code):
    scheduler, engine = make()
    engine.fail_next = raised
    scheduler.start()
    bad, good = job("bad"), job("good", hue=1)
    scheduler.submit(bad)
    wait_for(lambda: bad.finished)
    scheduler.submit(good)
    wait_for(lambda: good.finished)
    assert bad.failure is not None
    assert bad.failure.kind is kind
    error = job_error(bad)
    assert error is not None
    assert (error.status, error.code) == (status, code)
    if kind is not FailureKind.INTERNAL:
        assert str(raised) in error.message  # the engine's own words reach the client
    assert good.state is JobState.SUCCEEDED


def test_time_limits_fail_waiting_and_running_jobs_with_504(make):
    scheduler, engine, _gate = held(make)
    running = job("run", timeout_s=0.2, coats=5)
    scheduler.submit(running)
    engine.started.wait(5)
    waiting = job("wait", timeout_s=0.05)
    scheduler.submit(waiting)
    time.sleep(0.1)
    scheduler.expire_if_due(waiting)  # a handler fails it without waiting for the worker
    assert waiting.state is JobState.FAILED
    wait_for(lambda: running.finished)
    assert running.state is JobState.FAILED
    for j in (waiting, running):
        error = job_error(j)
        assert error is not None
        assert (error.status, error.code) == (504, "request_timeout")


def test_images_are_encoded_off_the_worker_thread_and_the_next_batch_starts_at_once(make):
    encoding = threading.Event()
    release = threading.Event()

    def slow_encode(j: Job, image: Image.Image) -> bytes:
        encoding.set()
        release.wait(5)
        return threading.current_thread().name.encode()

    engine = SwatchEngine()
    scheduler = Scheduler(engine, queue_limit=8, encode=slow_encode, batch_window_s=0.0)
    try:
        first, second = job("first"), job("second", hue=5)
        scheduler.submit(first)
        scheduler.submit(second)
        scheduler.start()
        encoding.wait(5)
        wait_for(lambda: len(engine.batches) == 2)  # drawn while the first is being encoded
        assert not first.finished
        assert scheduler.busy
        assert scheduler.jobs_in_flight >= 1
        release.set()
        wait_for(lambda: first.finished and second.finished)
        assert first.images == [b"text2img-encode_0"]
    finally:
        release.set()
        scheduler.stop(5)


def test_prompt_cut_by_the_engine_is_kept_per_image(make):
    scheduler, _ = make()
    scheduler.start()
    long = job("one two three four five six seven eight")
    scheduler.submit(long)
    wait_for(lambda: long.finished)
    assert long.prompts_used == ["one two three four five six"]


def test_begin_shutdown_fails_waiting_jobs_and_lets_the_running_batch_finish(make):
    scheduler, engine, gate = held(make)
    running, waiting = job("run"), job("wait", hue=3)
    scheduler.submit(running)
    engine.started.wait(5)
    scheduler.submit(waiting)
    scheduler.begin_shutdown()
    assert waiting.state is JobState.CANCELLED
    error = job_error(waiting)
    assert error is not None
    assert (error.status, error.code) == (503, "shutting_down")
    with pytest.raises(SchedulerStopped):
        scheduler.submit(job())
    assert scheduler.alive
    gate.set()
    wait_for(lambda: not scheduler.alive)
    assert running.state is JobState.SUCCEEDED


def test_stop_cancels_everything_and_leaves_no_threads(make):
    before = set(threading.enumerate())
    scheduler, engine, _gate = held(make)
    running, waiting = job("run"), job("wait", hue=3)
    scheduler.submit(running)
    engine.started.wait(5)
    scheduler.submit(waiting)
    scheduler.stop(5)
    assert running.state is JobState.CANCELLED
    assert waiting.state is JobState.CANCELLED
    assert all(job_error(j).code == "shutting_down" for j in (running, waiting))  # type: ignore[union-attr]
    leaked = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leaked == []


def test_the_queue_imports_neither_torch_nor_http():
    code = (
        "import sys; import text2img.api.scheduler, text2img.api.jobs; "
        "print(sorted(m for m in ('torch', 'fastapi', 'starlette', 'http') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def run_order(make, finishes: list[str]) -> tuple[list[str], SwatchEngine]:
    """Jobs submitted while the first (matte) batch is held, one image per batch; the
    prompts in the order they were drawn."""
    scheduler, engine, gate = held(make, max_batch=1)
    first = job("first", finish="matte")
    scheduler.submit(first)
    engine.started.wait(5)
    later = [job(f"{f}{i}", finish=f, hue=i) for i, f in enumerate(finishes)]
    for j in later:
        scheduler.submit(j)
    gate.set()
    wait_for(lambda: all(j.finished for j in [first, *later]))
    assert all(j.state is JobState.SUCCEEDED for j in later)
    return [b[0].prompt for b in engine.batches], engine


def test_jobs_on_the_loaded_weights_go_first_to_spare_swaps(make):
    # SDXL-Lightning with 2/4/8 steps on a T4 draws one 1024 image per batch, and each
    # step count is its own UNet (~5 GB): alternating requests must not swap every time
    order, engine = run_order(make, ["gloss", "matte", "gloss", "matte", "gloss"])
    assert order == ["first", "matte1", "matte3", "gloss0", "gloss2", "gloss4"]
    assert engine.swaps == 1  # first come, first served: 5


def test_a_job_is_passed_over_at_most_twice(make):
    # a steady stream on the loaded weights does not starve a request for other weights
    order, engine = run_order(make, ["gloss", "matte", "matte", "matte", "matte"])
    assert order == ["first", "matte1", "matte2", "gloss0", "matte3", "matte4"]
    assert engine.swaps == 2
