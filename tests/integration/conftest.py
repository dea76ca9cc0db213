"""One small shared Ray cluster for the whole integration run (CONVENTIONS.md §10).

An autouse guard makes any attempt by code under test to start its own local cluster fail, so
every test provably runs on this one.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=400 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _no_private_cluster(request, monkeypatch):
    from distml.runtime import cluster

    def refuse(*a, **k):
        raise AssertionError(
            "code under test tried to start its own Ray cluster; "
            "integration tests use the shared `ray_cluster` fixture"
        )

    if "allow_local_ray" not in request.keywords:
        monkeypatch.setattr(cluster, "_start_local", refuse)
    yield
