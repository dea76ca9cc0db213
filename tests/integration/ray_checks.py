"""Checks on the shared test cluster that several integration test files make."""

from __future__ import annotations

import time


def wait_resources_free(ray, timeout: float = 60) -> None:
    """RELIABILITY.md T10: every CPU free again and no job actor alive. Ray Data's detached
    bookkeeping actors (stats, autoscaling coordinator) live as long as the cluster: they are
    Ray's, not the job's."""
    deadline = time.monotonic() + timeout
    while True:
        free = ray.available_resources().get("CPU", 0) >= ray.cluster_resources()["CPU"]
        # Private Ray API, kept on purpose: the public ``ray.util.state.list_actors`` asks the
        # dashboard, which the shared test cluster does not start (2 cores); ``actors()`` reads
        # the GCS actor table directly. tests/unit/test_ray_private_apis.py fails if it changes.
        alive = [
            a["ActorClassName"]
            for a in ray._private.state.actors().values()
            if a["State"] == "ALIVE" and not a["IsDetached"]
        ]
        if free and not alive:
            return
        assert time.monotonic() < deadline, f"after the job: CPUs busy={not free}, alive={alive}"
        time.sleep(0.2)


def end_autoscaling_coordinator() -> None:
    """Kill Train's detached autoscaling coordinator an earlier Train run may have left."""
    import ray

    try:
        ray.kill(ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator"))
    except ValueError:  # none yet
        return
    wait_dead(actor_ids_by_class().get("_AutoscalingCoordinatorActor", set()))


def wait_dead(ids: set[str], timeout: float = 30) -> bool:
    """Whether the actors ``ids`` are all dead within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not _all_dead(ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _all_dead(ids)


def _all_dead(ids: set[str]) -> bool:
    import ray

    actors = ray._private.state.actors()
    return all(actors[i]["State"] == "DEAD" for i in ids if i in actors)


def actor_ids_by_class() -> dict[str, set[str]]:
    """Every actor the cluster has known (alive or dead), by class name."""
    import ray

    out: dict[str, set[str]] = {}
    for actor in ray._private.state.actors().values():
        out.setdefault(actor["ActorClassName"], set()).add(actor["ActorID"])
    return out
