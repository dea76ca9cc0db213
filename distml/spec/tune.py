"""The ``tune`` section of a spec: search space, metric, search, scheduler (no heavy imports).

A search space maps spec paths to one distribution each::

    space:
      model.params.max_depth: {randint: [2, 10]}        # integers 2..10, both ends included
      model.params.eta: {loguniform: [0.005, 0.3]}
      model.params.grow_policy: {choice: [depthwise, lossguide]}

Each entry is checked here on its own (bounds, log of non-positive values, types); the paths are
checked against the kind's spec in :func:`check_job` by applying representative values (both
ends of a range, every choice) to the spec and validating the result, so an unknown or unsettable
path fails with the spec's own sentence before anything runs.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: distribution name → what its list holds (for messages)
DISTRIBUTIONS: dict[str, str] = {
    "uniform": "[low, high]",
    "loguniform": "[low, high]",
    "quniform": "[low, high, q]",
    "randint": "[low, high]",
    "lograndint": "[low, high]",
    "choice": "[value, ...]",
    "grid": "[value, ...]",
}
Distribution = Literal[
    "uniform", "loguniform", "quniform", "randint", "lograndint", "choice", "grid"
]
#: spec sections a search may not change: trials share the data read once, and one run has one
#: name, kind, output root and resource shape.
FROZEN_ROOTS = ("data", "name", "kind", "output", "resources", "tune")
#: metric names whose best value is the smallest; ``mode`` is inferred for these and MAXIMIZE.
MINIMIZE = frozenset(
    {
        "logloss",
        "mlogloss",
        "rmse",
        "mse",
        "mae",
        "mape",
        "error",
        "merror",
        "loss",
        "aic",
        "bic",
        "hqic",
        "inertia",
        "deviance",
        "rmsle",
        "reconstruction_error",
    }
)
MAXIMIZE = frozenset(
    {
        "accuracy",
        "roc_auc",
        "auc",
        "f1",
        "precision",
        "recall",
        "r2",
        "r_squared",
        "adj_r_squared",
        "llf",
        "explained_variance",
        "explained_variance_ratio",
        "pseudo_r_squared",
        "silhouette",
    }
)
SPLITS = ("train", "valid", "cv")
_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_-]+)+$")
_METRIC_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_INT_LIMIT = 2**62
_MAX_SEED = 2**32 - 1
_MAX_VALUES = 10_000
#: representative numbers checked per path (a long list of numbers is checked on its first ones;
#: every value that is not a number is checked)
_MAX_CHECKED = 1000
_MAX_TRIALS = 1_000_000


def show_value(value: Any, limit: int = 60) -> str:
    """``repr`` of a value for a message: one line, shortened."""
    try:
        text = repr(value)
    except Exception:  # an int past Python's digit limit
        return "a very large number"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_show = show_value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_entry(path: str, entry: Any) -> dict[str, list]:
    """One space entry → ``{name: values}``; raises ValueError with a whole sentence."""
    where = f"tune.space.{path}"
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ValueError(
            f"{where} must be a mapping with one distribution, e.g. "
            f"{{loguniform: [0.001, 0.1]}} ({', '.join(DISTRIBUTIONS)}); "
            f"got {_show(entry)}"
        )
    ((name, values),) = entry.items()
    if name not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(name), list(DISTRIBUTIONS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"{where}: {_show(name)} is not a distribution (one of "
            f"{', '.join(DISTRIBUTIONS)}){hint}"
        )
    if isinstance(values, tuple):
        values = list(values)
    if not isinstance(values, list):
        raise ValueError(f"{where}: {name} needs a list {DISTRIBUTIONS[name]}; got {_show(values)}")
    if name in ("choice", "grid"):
        if not values:
            raise ValueError(f"{where}: {name} needs at least one value; got []")
        if len(values) > _MAX_VALUES:
            raise ValueError(
                f"{where}: {name} may list at most {_MAX_VALUES} values; got {len(values)}"
            )
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{where}: {name} values must be finite; got {_show(values)}")
        return {name: values}
    n = 3 if name == "quniform" else 2
    if len(values) != n:
        raise ValueError(f"{where}: {name} needs {DISTRIBUTIONS[name]}; got {_show(values)}")
    integer = name in ("randint", "lograndint")
    for v in values:
        if integer and not _is_int(v):
            raise ValueError(
                f"{where}: {name} needs integer bounds {DISTRIBUTIONS[name]}; got {_show(values)}"
            )
        if not _is_number(v) or abs(v) > _INT_LIMIT or not math.isfinite(v):  # ints: no float()
            raise ValueError(
                f"{where}: {name} needs finite numbers {DISTRIBUTIONS[name]} of "
                f"magnitude at most 2**62; got {_show(values)}"
            )
    low, high = values[0], values[1]
    if name in ("loguniform", "lograndint"):
        if not 0 < low < high:
            raise ValueError(f"{where}: {name} needs 0 < low < high; got {_show(values)}")
    elif not low < high:
        raise ValueError(f"{where}: {name} needs low < high; got {_show(values)}")
    if name == "quniform":
        q = values[2]
        if not 0 < q <= high - low:
            raise ValueError(f"{where}: quniform needs 0 < q <= high - low; got {_show(values)}")
    return {name: values}


class TuneSpec(BaseModel):
    """Hyperparameter search over spec paths (any trainable kind)."""

    # The same rules as distml.spec.base.StrictModel (not imported: that module imports this one).
    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        protected_namespaces=(),
        allow_inf_nan=False,
        ser_json_inf_nan="constants",
    )

    metric: str = Field(
        ...,
        description="Metric to optimise, SPLIT.NAME (e.g. valid.logloss, "
        "valid.roc_auc, cv.accuracy).",
        json_schema_extra={"pattern": _METRIC_RE.pattern},
    )
    mode: Literal["min", "max"] | None = Field(
        None, description="min or max; default: inferred from the metric name (losses: min)."
    )
    # One distribution per path: checked by _space; the schema says it with min/maxProperties.
    space: dict[str, dict[Distribution, list[Any]]] = Field(
        ...,
        min_length=1,
        json_schema_extra={
            "propertyNames": {"pattern": _PATH_RE.pattern},
            "additionalProperties": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "propertyNames": {"enum": list(DISTRIBUTIONS)},
                "additionalProperties": {"type": "array"},
            },
        },
        description="Spec path -> one distribution: uniform, loguniform, quniform [low, high, q], "
        "randint/lograndint [low, high] (both included), choice or grid [values].",
    )
    num_samples: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Trials to sample (grid: repeats of the whole grid); default 10, grid 1.",
    )
    search: Literal["random", "grid", "optuna"] = Field(
        "random", description="random, grid (every combination) or optuna (TPE, seeded)."
    )
    scheduler: Literal["none", "asha", "median"] = Field(
        "none", description="Early stopping of poor trials (iterative kinds only)."
    )
    max_concurrent: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Trials at once; default and cap: what the cluster's CPUs/GPUs allow.",
    )
    time_budget_s: float | None = Field(
        None, gt=0, le=10_000_000, description="Stop the whole search after this many seconds."
    )
    max_failures: int = Field(
        0, ge=0, le=100, description="Retries of a trial whose process dies (from its checkpoint)."
    )
    seed: int = Field(
        0,
        ge=0,
        description="Seed of the search (random/grid sampling, TPE).",
        json_schema_extra={"maximum": _MAX_SEED},
    )
    grace_period: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Scheduler: iterations a trial runs before it may be stopped; default: a "
        "quarter of a trial's iterations (asha: half of them).",
    )
    report_every: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Iterative kinds: report to the scheduler every N iterations; default: what "
        "the scheduler reads (asha: every grace_period iterations; median: about 10 per trial; "
        "none: the final report and those carrying a checkpoint, about 10 per trial with "
        "time_budget_s).",
    )
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Iterative kinds: checkpoint every N iterations (a multiple of report_every); "
        "default: at a report once 10 s passed since the last checkpoint.",
    )

    @field_validator("space", mode="before")
    @classmethod
    def _space(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v  # pydantic says "must be a mapping"
        if not v:
            raise ValueError(
                "tune.space must name at least one spec path to search, e.g. "
                "model.params.max_depth: {randint: [2, 10]}"
            )
        out = {}
        for path, entry in v.items():
            if not isinstance(path, str) or not _PATH_RE.match(path):
                raise ValueError(
                    f"tune.space keys must be dotted spec paths such as "
                    f"model.params.max_depth; got {_show(path)}"
                )
            root = path.split(".", 1)[0]
            if root in FROZEN_ROOTS:
                raise ValueError(
                    f"tune.space.{path}: {root}.* cannot be searched (trials share "
                    "one dataset, name, output and resource shape); search model.* "
                    "fields instead"
                )
            out[path] = _check_entry(path, entry)
        return out

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if not _METRIC_RE.match(v):
            raise ValueError(
                f"tune.metric must be SPLIT.NAME such as valid.logloss; got {_show(v)}"
            )
        split = v.split(".")[0] if "." in v else None
        if split == "test":
            raise ValueError(
                f"tune.metric must not use the test split (choosing a model on it "
                f"leaks the test data into the choice); got {v!r}; use valid.NAME"
            )
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if v > _MAX_SEED:
            raise ValueError(f"must be <= {_MAX_SEED}; got {v}")
        return v

    @model_validator(mode="after")
    def _rules(self) -> "TuneSpec":
        name = self.metric.rsplit(".", 1)[-1]
        if self.mode is None:
            if name in MINIMIZE:
                object.__setattr__(self, "mode", "min")
            elif name in MAXIMIZE:
                object.__setattr__(self, "mode", "max")
            else:
                raise ValueError(
                    f"tune.mode is required for metric {self.metric!r} (distml infers "
                    "it only for known metrics such as logloss or accuracy); set "
                    "tune.mode: min or max"
                )
        kinds = {p: next(iter(e)) for p, e in self.space.items()}
        if self.search == "grid":
            bad = [p for p, k in kinds.items() if k not in ("grid", "choice")]
            if bad:
                raise ValueError(
                    f"tune.search grid needs grid or choice values for every path; "
                    f"tune.space.{bad[0]} is {kinds[bad[0]]}; use grid: [...] or "
                    "search: random"
                )
        if self.search == "optuna":
            bad = [p for p, k in kinds.items() if k == "grid"]
            if bad:
                raise ValueError(
                    f"tune.space.{bad[0]}: grid does not combine with search optuna; "
                    "use choice: [...] or search: grid"
                )
        if self.num_samples is None:
            object.__setattr__(self, "num_samples", 1 if self.search == "grid" else 10)
        if self.num_samples * self.n_grid > _MAX_TRIALS:
            raise ValueError(
                f"tune would run {self.num_samples * self.n_grid} trials (grid "
                f"combinations x num_samples); at most {_MAX_TRIALS} are allowed"
            )
        if (
            self.report_every
            and self.checkpoint_every
            and self.checkpoint_every % self.report_every
        ):
            raise ValueError(
                f"tune.checkpoint_every must be a multiple of tune.report_every "
                f"(checkpoints travel with reports); got {self.checkpoint_every} "
                f"and {self.report_every}"
            )
        return self

    @property
    def split(self) -> str | None:
        """The split of the metric (``valid`` in ``valid.logloss``), None for a bare name."""
        return self.metric.split(".", 1)[0] if "." in self.metric else None

    @property
    def metric_name(self) -> str:
        return self.metric.rsplit(".", 1)[-1]

    @property
    def n_grid(self) -> int:
        """Trials one pass over the grid values makes (1 without grid entries)."""
        n = 1
        for entry in self.space.values():
            ((kind, values),) = entry.items()
            if kind == "grid" or (kind == "choice" and self.search == "grid"):
                n *= len(values)
        return n


def representative_values(entry: dict[str, list]) -> list[Any]:
    """Values that stand for a distribution when checking a path: both ends, every choice."""
    ((kind, values),) = entry.items()
    if kind in ("choice", "grid"):
        return list(values)
    low, high = values[0], values[1]
    if kind == "quniform":
        q = values[2]
        return [round(low / q) * q, math.floor(high / q) * q]
    return [low, high]


def checked_values(entry: dict[str, list]) -> list[Any]:
    """The representative values a check applies: every value that is not a plain number (a
    text value may be evaluated, e.g. a formula, so each one a trial can get is checked), and
    the first ``_MAX_CHECKED`` numbers of a long list (a number outside a checked range is
    caught by the kind's field bounds when the trial starts)."""
    values = representative_values(entry)
    return values[:_MAX_CHECKED] + [
        v for v in values[_MAX_CHECKED:] if not (v is None or isinstance(v, (bool, int, float)))
    ]


def check_job(spec: Any) -> None:
    """Cross-field checks of a spec with a ``tune`` section (called by ``JobSpec`` validation).

    Every search path must be settable to every representative value (the spec with that value
    applied must validate), the metric's split must exist in ``data.split``, and a scheduler needs
    a kind that reports every iteration. Raises ValueError with one sentence.
    """
    tune = spec.tune
    if tune is None:
        return
    from distml.registry import kind_module
    from distml.spec.load import apply_overrides, error_messages

    module = kind_module(spec.kind)
    base = spec.to_dict()
    base.pop("tune", None)
    for path, entry in tune.space.items():
        for value in checked_values(entry):
            try:
                raw = apply_overrides(base, {path: value})
                module.Spec.model_validate(raw)
            except Exception as e:  # ValidationError, SpecError, anything a validator raised
                errors = getattr(e, "errors", None)
                detail = None
                if callable(errors):
                    try:
                        msgs = error_messages(errors(), raw)
                        detail = msgs[0] if msgs else None
                    except Exception:
                        detail = None
                detail = detail or (str(e).splitlines()[0] if str(e) else type(e).__name__)
                raise ValueError(
                    f"tune.space.{path}: the value {_show(value)} does not fit the "
                    f"spec ({detail.rstrip('.')})"
                ) from None
    split = spec.data.split_spec
    if tune.split != "cv" and split is not None and split.cv:
        raise ValueError(
            f"tune.metric {tune.metric} and data.split.cv conflict: with "
            f"cross-validation trials are scored on the folds; use "
            f"cv.{tune.metric_name}"
        )
    if tune.split == "valid" and (split is None or split.valid == 0):
        raise ValueError(
            f"tune.metric {tune.metric} needs a validation split; data.split has no "
            "valid fraction; set data.split.valid (e.g. 0.2) or use cv.NAME with "
            "data.split.cv"
        )
    if tune.split == "cv" and (split is None or not split.cv):
        raise ValueError(
            f"tune.metric {tune.metric} needs cross-validation; set data.split.cv "
            "(e.g. 5) or use valid.NAME"
        )
    job = module.Job(spec)
    names = job.tune_metric_names()
    if names is not None and tune.metric_name not in names:
        close = difflib.get_close_matches(tune.metric_name, sorted(names), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"tune.metric {tune.metric!r} is not a metric of kind {spec.kind} "
            f"({', '.join(sorted(names))}){hint}"
        )
    if tune.scheduler != "none":
        iterations = job.tune_iterations()
        if not iterations or tune.split == "cv":
            why = (
                "cross-validated trials report once"
                if tune.split == "cv"
                else f"kind {spec.kind} fits in one shot"
            )
            raise ValueError(
                f"tune.scheduler {tune.scheduler} needs trials that report every "
                f"iteration (boosting rounds, epochs); {why}; set "
                "tune.scheduler: none"
            )
        per_round = job.tune_iteration_metrics()
        if per_round is not None and tune.metric_name not in per_round:
            raise ValueError(
                f"tune.scheduler {tune.scheduler} needs a metric kind {spec.kind} "
                f"computes every iteration ({', '.join(sorted(per_round))}); got "
                f"{tune.metric!r}; set tune.scheduler: none or change tune.metric"
            )
        for name in ("report_every", "grace_period"):
            value = getattr(tune, name)
            if value and value > iterations:
                raise ValueError(
                    f"tune.{name} must be at most the iterations of a trial "
                    f"({iterations}); got {value}"
                )


def check_trials(spec: Any) -> None:
    """Checks before the cluster starts that need the kind's Job, not only its spec: every
    representative trial spec passes the kind's ``check_spec`` (e.g. sklearn parameter names),
    and the search's optional dependency is installed. Raises SpecError/MissingDependency."""
    import importlib.util

    from distml.errors import MissingDependency, SpecError
    from distml.registry import kind_module
    from distml.spec.load import load_spec

    tune = spec.tune
    if tune is None:
        return
    if tune.search == "optuna" and importlib.util.find_spec("optuna") is None:
        raise MissingDependency.for_extra("optuna", "tune", "tune.search: optuna")
    module = kind_module(spec.kind)
    base = spec.to_dict()
    base.pop("tune", None)
    for path, entry in tune.space.items():
        for value in checked_values(entry):
            try:
                module.Job(load_spec(base, {path: value})).check_spec()
            except SpecError as e:
                raise SpecError(
                    f"tune.space.{path}: the value {_show(value)} does not fit the "
                    f"spec ({e.message.rstrip('.')})"
                ) from None
