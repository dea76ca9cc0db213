"""What the boosting kinds (xgboost, lightgbm) share: boosting rounds are a search's iterations."""

from __future__ import annotations

from typing import Any

from distml.jobs._supervised import SupervisedJob


class BoostingJob(SupervisedJob):
    """A supervised kind that boosts ``model.num_boost_round`` rounds and reports every round."""

    #: distml metric name → the library's per-round metric for (binary, multiclass, regression)
    round_metrics: dict[str, tuple[str | None, str | None, str | None]] = {}

    def tune_iterations(self) -> int:
        return self.spec.model.num_boost_round

    def tune_iteration_metrics(self) -> set[str]:
        return set(self.round_metrics)

    def tune_final_overrides(self, result: dict) -> dict[str, Any]:
        """A trial stopped early by the scheduler is refitted with the rounds it reached."""
        rounds = int(result.get("iteration") or 0)
        if not result.get("final") and 0 < rounds < self.spec.model.num_boost_round:
            return {"model.num_boost_round": rounds}
        return {}
