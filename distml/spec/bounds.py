"""Sanity bounds on the estimator parameters that set how much work a fit does.

``model.params`` of the sklearn kind go to the estimator unchanged, so a typo such as
``n_estimators: 1000000000000`` would validate and then run (or exhaust memory) for hours. Each
bound here is far above any useful value, in the spirit of xgboost's
``num_boost_round <= 1,000,000`` (distml/jobs/xgboost/__init__.py).
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

#: parameter -> (minimum, maximum, what it counts)
WORK_PARAMS: dict[str, tuple[int, int, str]] = {
    "n_estimators": (1, 100_000, "trees or boosting stages"),
    "max_iter": (1, 1_000_000, "iterations"),
    "max_fun": (1, 1_000_000, "function calls"),
    "n_neighbors": (1, 100_000, "neighbours"),
    "max_leaf_nodes": (2, 10_000_000, "leaves per tree"),
    "n_iter_no_change": (1, 1_000_000, "iterations"),
}


def check_work_params(params: Mapping[str, Any], prefix: str = "model.params") -> None:
    """Raise ValueError naming the parameter and its bound when a work-size parameter of
    ``params`` is not a whole number within :data:`WORK_PARAMS` (None is left to the estimator:
    several take it to mean 'no limit' where the data bound the work)."""
    for key, (low, high, what) in WORK_PARAMS.items():
        if key not in params or params[key] is None:
            continue
        value = params[key]
        whole = (isinstance(value, numbers.Integral) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:36] + "..."
        if not whole or not low <= value <= high:
            raise ValueError(
                f"{prefix}.{key} must be a whole number of {what} from {low:,} to "
                f"{high:,} (a sanity bound); got {shown}"
            )
