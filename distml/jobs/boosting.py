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


def curve_tables(history: dict, first: int = 0) -> dict:
    """``{"learning_curve": ...}`` (iteration, split, metric, value) from a booster's
    evaluation history ``{split: {metric: [value per round]}}``, rounds counted from ``first``
    (a retried trial's history starts at its checkpoint); empty without evaluations."""
    import pandas as pd

    curve = pd.DataFrame(
        [
            {"iteration": first + i, "split": split, "metric": metric, "value": float(v)}
            for split, by_metric in history.items()
            for metric, values in by_metric.items()
            for i, v in enumerate(values)
        ]
    )
    return {"learning_curve": curve} if len(curve) else {}
