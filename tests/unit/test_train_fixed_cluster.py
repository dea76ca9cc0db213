"""On a cluster distml started itself, a Ray Train run skips what only an autoscaled cluster
uses (distml.runtime.workers.fixed_cluster_train): the autoscaler requests of Train's fixed
scaling policy, a dataset manager for a run given no datasets, the wait for the placement-group
cleaner to stop, and the preemption watcher. The real worker group runs this way in
tests/integration/test_xgboost_dist.py (through a worker death), which also checks that none of
those actors starts."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.train.v2._internal.execution.scaling_policy.fixed")

from ray.train import ScalingConfig  # noqa: E402
from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy  # noqa: E402
from ray.train.v2.api import data_parallel_trainer as trainer_module  # noqa: E402

from distml.runtime import _train_policy as P  # noqa: E402
from distml.runtime import cluster  # noqa: E402
from distml.runtime import workers as D  # noqa: E402


def test_the_block_swaps_trains_policy_and_callbacks_and_restores_them():
    own = (
        trainer_module.create_scaling_policy,
        trainer_module.DatasetsCallback,
        trainer_module.PlacementGroupCleanerCallback,
    )
    with D.fixed_cluster_train():
        policy = trainer_module.create_scaling_policy(ScalingConfig(num_workers=2))
        assert type(policy) is P.LocalFixedScalingPolicy
        assert trainer_module.DatasetsCallback is P.DatasetsOnlyWhenGiven
        assert trainer_module.PlacementGroupCleanerCallback is P.CleanerStoppedInBackground
    assert (
        trainer_module.create_scaling_policy,
        trainer_module.DatasetsCallback,
        trainer_module.PlacementGroupCleanerCallback,
    ) == own
    with pytest.raises(RuntimeError):  # restored on an error too
        with D.fixed_cluster_train():
            raise RuntimeError("boom")
    assert trainer_module.create_scaling_policy is own[0]


def test_the_local_policy_decides_as_trains_without_asking_an_autoscaler(monkeypatch):
    def no_coordinator(*a, **k):
        raise AssertionError("asked the autoscaling coordinator")

    from ray.train.v2._internal.execution.scaling_policy import scaling_policy

    monkeypatch.setattr(scaling_policy, "TrainAutoscalingCoordinatorClient", no_coordinator)
    config = ScalingConfig(num_workers=3, resources_per_worker={"CPU": 1})
    local, ray_own = P.LocalFixedScalingPolicy(config), FixedScalingPolicy(config)
    local.after_controller_start(SimpleNamespace(run_id="r"))
    decision = local.make_decision_for_non_running_worker_group()
    assert decision.num_workers == 3 and decision.resources_per_worker == {"CPU": 1}
    assert type(local.make_decision_for_running_worker_group(None, None)).__name__ == (
        "NoopDecision"
    )
    local._cancel_resource_request()
    with pytest.raises(AssertionError):  # Train's own policy would have asked
        ray_own.after_controller_start(SimpleNamespace(run_id="r"))


def test_no_dataset_manager_without_datasets_and_trains_own_with_them(monkeypatch):
    workers = [SimpleNamespace(metadata=SimpleNamespace(node_id="n"))] * 2
    cb = P.DatasetsOnlyWhenGiven.__new__(P.DatasetsOnlyWhenGiven)
    cb._datasets, cb._dataset_shard_provider = {}, None
    out = cb.before_init_train_context(workers)
    providers = out["dataset_shard_provider"]
    assert len(providers) == 2 and all(isinstance(p, P.NoDatasets) for p in providers)
    with pytest.raises(KeyError, match="train"):
        providers[0].get_dataset_shard(SimpleNamespace(dataset_name="train"))
    providers[0].shutdown_data_executors()  # what Train calls at the group's end

    calls = []
    monkeypatch.setattr(
        P.DatasetsCallback,
        "before_init_train_context",
        lambda self, ws: calls.append(len(ws)) or {"dataset_shard_provider": ["train's"]},
    )
    cb._datasets = {"train": object()}
    assert cb.before_init_train_context(workers) == {"dataset_shard_provider": ["train's"]}
    assert calls == [2]


def test_the_cleaner_is_ended_without_a_wait(monkeypatch):
    import ray

    killed = []
    monkeypatch.setattr(ray, "kill", lambda actor: killed.append(actor))
    cb = P.CleanerStoppedInBackground()
    cleaner = SimpleNamespace(stop=SimpleNamespace(remote=lambda: pytest.fail("waited stop")))
    cb._cleaner = cleaner
    cb._stop_cleaner()
    assert killed == [cleaner] and cb._cleaner is None
    cb._stop_cleaner()  # twice (shutdown, then abort): nothing more
    assert killed == [cleaner]


def test_fit_turns_off_the_preemption_watcher_only_on_a_fixed_cluster(monkeypatch):
    seen = {}

    class Trainer:
        def fit(self):
            seen["env"] = {k: os.environ.get(k) for k in (D.PREEMPTION_ENV, D.POLL_ENV)}
            seen["policy"] = trainer_module.create_scaling_policy
            return "result"

    monkeypatch.delenv(D.PREEMPTION_ENV, raising=False)
    monkeypatch.delenv(D.POLL_ENV, raising=False)
    own = trainer_module.create_scaling_policy
    assert D.fit(Trainer(), fixed_cluster=True) == "result"
    assert seen["env"] == {D.PREEMPTION_ENV: "0", D.POLL_ENV: str(D.POLL_S)}
    assert seen["policy"] is not own
    assert D.PREEMPTION_ENV not in os.environ and D.POLL_ENV not in os.environ
    D.fit(Trainer(), fixed_cluster=False)
    assert seen["env"] == {D.PREEMPTION_ENV: None, D.POLL_ENV: str(D.POLL_S)}
    assert seen["policy"] is own
    monkeypatch.setenv(D.PREEMPTION_ENV, "1")  # the user's own setting stays
    D.fit(Trainer(), fixed_cluster=True)
    assert seen["env"][D.PREEMPTION_ENV] == "1" and os.environ[D.PREEMPTION_ENV] == "1"


@pytest.mark.parametrize("mode,fixed", [("local", True), ("connected", False)])
def test_a_cluster_distml_started_is_fixed_for_the_run_only(monkeypatch, mode, fixed):
    import ray

    monkeypatch.setattr(cluster, "_start_local", lambda *a, **k: None)
    monkeypatch.setattr(cluster, "preflight", lambda *a, **k: None)
    monkeypatch.setattr(cluster, "_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(cluster, "_shutdown", lambda **k: None)
    monkeypatch.setattr(ray, "init", lambda *a, **k: None)
    addr = None if mode == "local" else "ray://somewhere:10001"
    assert cluster.fixed_size() is False
    with cluster._ray(addr, "test", None, None, 0.0, mode):
        assert cluster.fixed_size() is fixed
    assert cluster.fixed_size() is False
