"""The one task runner (distml.runtime.tasks) on the shared cluster: map over partitions and a
fixed merge tree equal the plain fold; a task's distml error comes back as itself; a consumer
that stops early gets the unfinished tasks cancelled, and the CPUs are free again."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest

from distml.errors import DataError, JobFailed
from distml.runtime.tasks import Runner
from distml.spec.base import ResourcesSpec


def _free_cpus(ray, timeout=30.0):
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "CPUs still held after the tasks"
        time.sleep(0.2)


def test_map_and_tree_reduce_equal_the_plain_fold(ray_cluster):
    class Total:
        def __init__(self, n, s, order):
            self.n, self.s, self.order = n, s, order

        def merge(self, other):
            return Total(self.n + other.n, self.s + other.s, self.order + other.order)

    def part_total(part, scale):
        x = np.arange(part * 10, part * 10 + 10, dtype=float) * scale
        return Total(len(x), float(x.sum()), [part])

    runner = Runner(ResourcesSpec())
    parts = list(range(19))  # three levels of a fan-in-8 tree
    total = runner.reduce(runner.map(part_total, parts, 2.0))
    assert total.n == 190 and total.s == pytest.approx(2.0 * np.arange(190).sum())
    assert total.order == parts  # merged in partition order, whatever finished first
    assert runner.tasks == 19 + 3 + 1
    capped = Runner(ResourcesSpec(num_workers=1, max_failures=1))
    assert capped.cap == 1 and capped.opts["max_retries"] == 1
    second = capped.get(capped.map(part_total, [0, 1], 1.0))[1]
    assert second.s == pytest.approx(sum(range(10, 20)))
    many = Runner(ResourcesSpec(), min_retries=3, limit_concurrency=False)
    assert many.cap is None and many.opts["max_retries"] == 3


def test_get_reraises_a_task_distml_error_and_wraps_others(ray_cluster):
    def bad_data(part):
        raise DataError(f"data.source: partition {part} is bad")

    def broken(part):
        raise ZeroDivisionError("division by zero\nin a helper")

    runner = Runner(ResourcesSpec())
    with pytest.raises(DataError, match="partition 0 is bad"):
        runner.get(runner.map(bad_data, [0]))
    with pytest.raises(JobFailed, match="a pass failed: ZeroDivisionError: in a helper"):
        runner.get(runner.map(broken, [0]), what="a pass")


def test_stream_yields_as_tasks_finish_and_cancels_the_rest(ray_cluster):
    def nap(part):
        time.sleep(0.05 if part < 2 else 30)
        return part

    runner = Runner(ResourcesSpec(), limit_concurrency=False)
    seen = []
    with pytest.raises(RuntimeError, match="stop"):
        with contextlib.closing(runner.stream(runner.map(nap, list(range(6))), batch=1)) as it:
            for batch, _n_pending in it:
                seen += batch
                raise RuntimeError("stop")
    assert len(seen) == 1 and seen[0] < 2
    _free_cpus(ray_cluster)  # the 30-second tasks were cancelled
    done = [r for batch, _ in runner.stream(runner.map(nap, [0, 1])) for r in batch]
    assert sorted(done) == [0, 1]


def test_cancel_all_ends_a_task_that_survives_a_plain_cancel(ray_cluster):
    """A task the plain cancel does not end (here it swallows the interruption; in Ray, a cancel
    that races the task's hand-over to its worker is lost the same way) is force-cancelled:
    its CPU is free within the grace period, not when the task would have ended."""
    from distml.runtime.tasks import cancel_all

    @ray_cluster.remote(num_cpus=1, max_retries=0)
    def stubborn():
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                time.sleep(0.1)
            except KeyboardInterrupt:
                pass
        return "ran to its end"

    ref = stubborn.remote()
    deadline = time.monotonic() + 30
    while ray_cluster.available_resources().get("CPU", 0) >= ray_cluster.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    cancel_all([ref], grace_s=1.0)  # the task would run 60 s: get() below times out at 30
    with pytest.raises(
        (ray_cluster.exceptions.TaskCancelledError, ray_cluster.exceptions.WorkerCrashedError)
    ):
        ray_cluster.get(ref, timeout=30)
    _free_cpus(ray_cluster, timeout=10.0)


def test_cancel_all_lets_a_task_that_is_ending_end(ray_cluster):
    """A task that ends within the settle pause is not cancelled: its result stands (a cancel
    that meets a task's completion can abort the cancelling process in Ray 2.60); a task well
    inside its run is still cancelled, and every CPU is free after."""
    from distml.runtime.tasks import cancel_all

    @ray_cluster.remote(num_cpus=1, max_retries=0)
    def nap(seconds):
        time.sleep(seconds)
        return seconds

    ending, long = nap.remote(1.0), nap.remote(60.0)
    deadline = time.monotonic() + 30
    while ray_cluster.available_resources().get("CPU", 0) > 0:  # both run (2 CPUs)
        assert time.monotonic() < deadline, "the tasks never started"
        time.sleep(0.02)
    ray_cluster.wait([ending], timeout=0.9)  # the short task has ~0.1 s left, then:
    cancel_all([ending, long], grace_s=1.0, settle_s=1.0)
    assert ray_cluster.get(ending, timeout=10) == 1.0
    with pytest.raises(
        (ray_cluster.exceptions.TaskCancelledError, ray_cluster.exceptions.WorkerCrashedError)
    ):
        ray_cluster.get(long, timeout=30)
    _free_cpus(ray_cluster, timeout=10.0)
