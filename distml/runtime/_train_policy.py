"""What a Ray Train run on a cluster distml started on this machine (a per-run cluster or
``distml cluster start``) does without: its fixed scaling policy's autoscaler requests (such a
cluster has no autoscaler, and Train's first request creates an ``_AutoscalingCoordinatorActor``,
a process of its own the controller waits for before it starts the worker group: 1.3 s of every
group here), a ``DatasetManager`` actor for a run given no datasets, and the wait for the
placement-group cleaner to stop (up to its 1 s check interval at the end of every run). Imported only by
:func:`distml.runtime.workers.fixed_cluster_train` and by the Train controller's unpickling."""

from __future__ import annotations

from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import (
    PlacementGroupCleanerCallback,
)
from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy


class LocalFixedScalingPolicy(FixedScalingPolicy):
    """:class:`FixedScalingPolicy` that asks no autoscaler for resources."""

    def after_controller_start(self, train_run_context) -> None:
        return None

    def _maybe_send_resource_request(self) -> None:
        return None

    def _send_resource_request(self) -> None:
        return None

    def _cancel_resource_request(self) -> None:
        return None


class NoDatasets:
    """The dataset shard provider of a group given no Ray Datasets (distml's workers read their
    shards themselves): Train's own provider starts a ``DatasetManager`` actor, a process that
    competes with the workers' imports on a small machine, for datasets that are not there."""

    def get_dataset_shard(self, dataset_info):
        raise KeyError(
            f"Dataset shard for {dataset_info.dataset_name!r} not found: this Train run was "
            "given no datasets"
        )

    def shutdown_data_executors(self) -> None:
        return None


class DatasetsOnlyWhenGiven(DatasetsCallback):
    """Train's :class:`DatasetsCallback`, with :class:`NoDatasets` where no dataset is given."""

    def before_init_train_context(self, workers):
        if self._datasets:
            return super().before_init_train_context(workers)
        self._dataset_shard_provider = NoDatasets()
        return {"dataset_shard_provider": [self._dataset_shard_provider] * len(workers)}


class CleanerStoppedInBackground(PlacementGroupCleanerCallback):
    """Train's placement-group cleaner callback, which ends the cleaner without waiting for it:
    its monitor thread notices a stop only when its 1 s queue wait ends, and the controller's
    shutdown waited for that. A stopped cleaner removes nothing (Train's own stop says so), and
    neither does a killed one; ``ray.kill`` ends the detached actor for certain, where a stop
    message nobody waits for could be lost and leave it on a warm cluster."""

    def _stop_cleaner(self) -> None:
        import ray

        cleaner, self._cleaner = self._cleaner, None
        if cleaner is not None:
            try:
                ray.kill(cleaner)
            except Exception:  # an exited cleaner: nothing to end
                pass
