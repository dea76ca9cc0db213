"""The spec of kind ``ladder``: candidates (each a small spec of another kind), the metric, the
promotion rule; and how a candidate's full job spec is built from the ladder's.

A candidate is ``{name, kind, model, tune?}``; its job spec is the ladder's ``data`` (the same
source, target and ``data.split`` — hence the same folds) and ``resources`` with its own
``model``. Every candidate spec is validated with its kind's own ``Spec`` when the ladder spec
loads, so a bad candidate is exit 2 naming the candidate and the field before any cluster work.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distml.jobs.ladder.stats import CLASSIFICATION_METRICS, REGRESSION_METRICS, metric_mode
from distml.spec.base import JobSpec, SplitSpec, StrictModel, TuneSpec, check_name

#: kinds that cannot be a candidate (no supervised fold fit)
NOT_CANDIDATES = frozenset({"ladder", "pca", "kmeans"})
DEFAULT_CV = 5
METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS


class Candidate(StrictModel):
    """One rung of the ladder: a small spec of another kind."""

    name: str = Field(..., description="Rung name, [A-Za-z0-9._-]{1,128}; unique in the ladder.")
    kind: str = Field(
        ..., description="The candidate's kind: sklearn, statsmodels, xgboost or torch."
    )
    model: dict[str, Any] = Field(
        default_factory=dict, description="The kind's model section, as in its own spec."
    )
    tune: TuneSpec | None = Field(
        None,
        description="The candidate's own search, run inside each fold (nested): metric "
        "cv.NAME, space, num_samples, search random or grid, seed.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "name")


class Promote(StrictModel):
    """When a rung replaces the incumbent."""

    alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Family-wise level: a rung is promoted when its Holm-adjusted p < alpha.",
    )
    min_gain: float = Field(
        0.0,
        ge=0,
        description="The gain (in metric units, signed so that "
        "positive is better) a rung must exceed.",
    )


class LadderSection(StrictModel):
    """The ``ladder`` section: metric, candidates and the promotion rule."""

    metric: str = Field(
        ...,
        description="Metric the rungs are compared on (roc_auc, accuracy, "
        "logloss, rmse, ...); its direction is inferred.",
    )
    candidates: list[Candidate] | Literal["auto"] = Field(
        "auto",
        description="Rungs in order of cost, or 'auto' for a default ladder of the "
        "installed kinds.",
    )
    promote: Promote = Field(default_factory=Promote, description="The promotion rule.")

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        try:
            metric_mode(v)
        except ValueError:
            close = difflib.get_close_matches(v, METRICS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"must be one of {', '.join(METRICS)}; got {v!r}{hint}") from None
        return v

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, v: Any) -> Any:
        if isinstance(v, list):
            if len(v) < 2:
                raise ValueError(
                    f"must list at least 2 candidates (a base rung and one to "
                    f"compare with it), or be 'auto'; got {len(v)}"
                )
            names = [c.name for c in v]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"must name each candidate once; got duplicates {dup}")
        return v


class Spec(JobSpec):
    """A ladder of candidates of other kinds, compared on the same cross-validation folds."""

    kind: Literal["ladder"]
    ladder: LadderSection

    @model_validator(mode="before")
    @classmethod
    def _no_search(cls, raw: Any) -> Any:
        # before JobSpec's own tune checks, which would judge the search paths first
        if isinstance(raw, dict) and raw.get("tune") is not None:
            raise ValueError(
                "tune is not supported for kind ladder itself; give the candidate "
                "that should search its own tune (ladder.candidates[i].tune)"
            )
        return raw

    @model_validator(mode="after")
    def _checks(self) -> Spec:
        d = self.data
        if "split" not in d.model_fields_set:
            d.split = SplitSpec(cv=DEFAULT_CV)
        split = d.split_spec
        if split is None or not split.cv:
            got = "split: none" if split is None else "a split without cv"
            raise ValueError(
                f"data.split.cv is required for kind ladder (the candidates are "
                f"compared fold by fold), e.g. split: {{cv: {DEFAULT_CV}, seed: 0}};"
                f" got {got}"
            )
        if not d.target:
            raise ValueError(
                "data.target is required for kind ladder; name the column the candidates predict"
            )
        if self.resources.num_workers != 1:
            raise ValueError(
                f"resources.num_workers must be 1 for kind ladder (each fold of "
                f"each candidate is one task); got {self.resources.num_workers}"
            )
        if isinstance(self.ladder.candidates, list):
            for i, cand in enumerate(self.ladder.candidates):
                check_candidate(self, i, cand)
        return self


def where(i: int, cand: Candidate) -> str:
    """How messages name a candidate: ``ladder.candidates[2] (gbm)``."""
    return f"ladder.candidates[{i}] ({cand.name})"


def candidate_dict(spec: Spec, cand: Candidate, formula: str | None = None) -> dict[str, Any]:
    """The candidate's own job spec as a dict: the ladder's data (same source, target and
    folds), resources and output, with its kind, model and tune. A statsmodels candidate with a
    formula (given, or ``formula`` made from the features) names the response in the formula,
    so ``data.target``/``data.features`` go."""
    data = spec.data.model_dump(mode="json")
    model = dict(cand.model)
    if formula is not None:
        model["formula"] = formula
    if cand.kind == "statsmodels" and model.get("formula"):
        data.pop("target", None)
        data.pop("features", None)
    out = {
        "name": cand.name,
        "kind": cand.kind,
        "data": data,
        "model": model,
        "resources": spec.resources.model_dump(mode="json"),
        "output": spec.output.model_dump(mode="json"),
    }
    if cand.tune is not None:
        out["tune"] = cand.tune.model_dump(mode="json", exclude_unset=True)
    return out


def check_candidate(spec: Spec, i: int, cand: Candidate, formula: str | None = None) -> JobSpec:
    """Validate one candidate with its kind's own spec; ValueError naming the candidate and the
    field. Returns the candidate's job spec."""
    from distml.errors import SpecError
    from distml.jobs import KINDS, kind_module
    from distml.jobs.base import Job as BaseJob
    from distml.spec.load import load_spec

    kinds = sorted(k for k in KINDS if k not in NOT_CANDIDATES)
    if cand.kind not in kinds:
        close = difflib.get_close_matches(cand.kind, kinds, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"{where(i, cand)}: kind must be one of {', '.join(kinds)}; got {cand.kind!r}{hint}"
        )
    job_cls = kind_module(cand.kind).Job
    if getattr(job_cls, "fit_predict_fold", None) is BaseJob.fit_predict_fold:
        raise ValueError(
            f"{where(i, cand)}: kind {cand.kind} cannot fit a fold (it has no "
            "fit_predict_fold); choose another kind"
        )
    if cand.kind == "statsmodels":
        _check_statsmodels(spec, i, cand)
    try:
        cspec = load_spec(candidate_dict(spec, cand, formula))
    except SpecError as e:
        problems = e.details or [e.message]
        raise ValueError(f"{where(i, cand)}: {'; '.join(problems)}") from None
    if cspec.tune is not None:
        from distml.jobs.ladder.nested import check_nested

        try:
            check_nested(cspec.tune)
        except ValueError as e:
            raise ValueError(f"{where(i, cand)}: {e}") from None
    return cspec


def _check_statsmodels(spec: Spec, i: int, cand: Candidate) -> None:
    """The statsmodels rules a fold fit needs: one regression model (no time series, no
    group_by, no counts response) whose response is the ladder's target."""
    method = cand.model.get("method", "ols")
    if method in ("arima", "sarimax"):
        raise ValueError(
            f"{where(i, cand)}: model.method {method} is a time-series model; a "
            "ladder compares models on shuffled folds; use a regression method"
        )
    formula = cand.model.get("formula")
    if isinstance(formula, str):
        try:
            import patsy

            lhs = patsy.ModelDesc.from_formula(formula).lhs_termlist
            code = lhs[0].factors[0].code if len(lhs) == 1 and len(lhs[0].factors) == 1 else None
        except Exception:  # the kind's own validation says what is wrong with it
            return
        target = spec.data.target
        if code not in (target, f'Q("{target}")', f"Q('{target}')"):
            raise ValueError(
                f"{where(i, cand)}: model.formula must have the ladder's target "
                f"{target!r} itself on the left of '~' (every rung predicts the "
                f"same column); got {formula!r}"
            )


def formula_for(target: str, features: list[str], categorical: list[str]) -> str:
    """A statsmodels formula of every feature: ``Q("y") ~ Q("x1") + C(Q("region"))``.

    >>> formula_for("y", ["a", "b c"], ["b c"])
    'Q("y") ~ Q("a") + C(Q("b c"))'
    """

    def q(c: str) -> str:
        return f"Q({c!r})" if '"' in c else f'Q("{c}")'

    terms = [f"C({q(c)})" if c in categorical else q(c) for c in features]
    return f"{q(target)} ~ {' + '.join(terms) if terms else '1'}"
