"""Search-space translation: the spec's ``tune.space`` ↔ Ray Tune domains and trial configs.

Tune configs are keyed by the spec path (``model.params.eta``). Choices that are not plain
scalars (``model.hidden: {choice: [[64], [128, 64]]}``) travel as their index, because Optuna's
categorical distribution takes scalars only; :meth:`Space.decode` turns a config back into
``{path: value}``. Integer ranges are inclusive in the spec (``randint: [2, 10]`` may give 10, as
Python's ``random.randint``) and exclusive in Tune, hence the ``+ 1``.

>>> from distml.spec.tune import TuneSpec
>>> s = Space(TuneSpec(metric="valid.rmse", space={"model.hidden": {"choice": [[8], [16, 8]]}}))
>>> s.decode({"model.hidden": 1})
{'model.hidden': [16, 8]}
"""

from __future__ import annotations

import json
from typing import Any

from distml.spec.tune import TuneSpec


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


class Space:
    """The search space of one ``tune`` section."""

    def __init__(self, tune: TuneSpec):
        self.tune = tune
        self.entries: dict[str, tuple[str, list]] = {
            path: next(iter(entry.items())) for path, entry in tune.space.items()
        }
        #: paths whose config values are indices into the listed values
        self.indexed = {
            path
            for path, (kind, values) in self.entries.items()
            if kind in ("choice", "grid") and not all(map(_scalar, values))
        }

    @property
    def paths(self) -> list[str]:
        return list(self.entries)

    def param_space(self) -> dict[str, Any]:
        """``{path: tune domain}`` for ``Tuner(param_space=...)``."""
        from ray import tune

        out: dict[str, Any] = {}
        for path, (kind, values) in self.entries.items():
            options = list(range(len(values))) if path in self.indexed else list(values)
            if kind == "grid" or (kind == "choice" and self.tune.search == "grid"):
                out[path] = tune.grid_search(options)
            elif kind == "choice":
                out[path] = tune.choice(options)
            elif kind == "uniform":
                out[path] = tune.uniform(values[0], values[1])
            elif kind == "loguniform":
                out[path] = tune.loguniform(values[0], values[1])
            elif kind == "quniform":
                out[path] = tune.quniform(values[0], values[1], values[2])
            elif kind == "randint":
                out[path] = tune.randint(values[0], values[1] + 1)
            elif kind == "lograndint":
                out[path] = tune.lograndint(values[0], values[1] + 1)
            else:  # pragma: no cover - TuneSpec admits only the names above
                raise ValueError(f"unknown distribution {kind!r}")
        return out

    def decode(self, config: dict[str, Any]) -> dict[str, Any]:
        """A trial's config → ``{spec path: value}`` (the overrides of that trial's spec)."""
        out = {}
        for path in self.entries:
            if path not in config:
                continue
            value = config[path]
            if path in self.indexed:
                value = self.entries[path][1][int(value)]
            elif hasattr(value, "item"):  # numpy scalar from Tune's samplers
                value = value.item()
            out[path] = value
        return out


def column_values(values: list[Any]) -> list[Any]:
    """Values of one parameter as a parquet-friendly column: kept if all are numbers, all text or
    all booleans; else text (``sqrt``, ``0.5``; lists and mappings as JSON).

    >>> column_values(["sqrt", 0.5, [64, 32]])
    ['sqrt', '0.5', '[64, 32]']
    """
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int} or kinds <= {float, int} or kinds <= {str} or kinds <= {bool}:
        return values
    return [
        None if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        for v in values
    ]
