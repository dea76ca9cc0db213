"""Kind ``statsmodels``: statistical models with full inference output, one or thousands at once.

Three execution paths, chosen before any work starts and recorded in ``manifest.json``:

- **single**: no ``group_by``: one Ray task reads the columns it needs and fits the model with
  statsmodels itself; ``summary.txt`` is statsmodels' own summary.
- **many-models**: ``group_by``: the rows are partitioned by group on the workers and the
  groups are fitted in batches, many per Ray task (see :mod:`distml.jobs.statsmodels.many`).
- **suffstats**: an OLS/WLS too big for one worker: exact per-partition sufficient statistics
  merged on the cluster (see :mod:`distml.jobs.statsmodels.suffstats`).

Every estimate, standard error, test statistic, p-value and interval comes from statsmodels'
results objects; distml only arranges the data and tabulates what statsmodels returns. The
spec is data: a formula is parsed without being evaluated, and only column names, numbers,
operators and a fixed set of functions may appear in it (no attribute access, no builtins).
Every bare name must be a column of the data (checked before the cluster starts, for the spec's
formula and for every formula a ``tune`` search may sample), and patsy evaluates terms in a
namespace where every Python builtin is shadowed by an inert placeholder
(:func:`formula_namespace`).
"""

from __future__ import annotations

import difflib
from typing import Any

from distml.errors import DataError, JobFailed, SpecError, one_line
from distml.jobs.base import Job as BaseJob
from distml.jobs.base import JobOutput, RunContext
from distml.jobs.statsmodels.fit import DISCRETE, REGRESSION, TIME_SERIES  # noqa: F401
from distml.jobs.statsmodels.formula import (  # noqa: F401
    NUMPY_FUNCS,
    FormulaInfo,
    analyze_formula,
    check_engine,
    formula_namespace,
)
from distml.jobs.statsmodels.spec import (  # noqa: F401
    FAMILY_LINKS,
    ROBUST_COV,
    TS_COV,
    Spec,
    StatsmodelsModel,
)
from distml.runtime.data import DataInfo, is_numeric_dtype, validate_data
from distml.runtime.splits import class_order

# ---------------------------------------------------------------------- the job


class Job(BaseJob):
    """statsmodels: single model, many-models (group_by) or sufficient statistics."""

    spec: Spec
    needs_target = False

    def columns(self) -> dict[str, list[str]]:
        """The columns each part of the spec uses, by role."""
        m, d = self.spec.model, self.spec.data
        roles: dict[str, list[str]] = {}
        if m.formula is not None:
            f = analyze_formula(m.formula)
            roles["model.formula"] = f.columns
        else:
            roles["model.endog"] = [m.endog or d.target]
            roles["model.exog"] = list(m.exog or d.features or [])
        for name in ("weights", "offset", "exposure", "cov_groups", "time", "trials"):
            if getattr(m, name):
                roles[f"model.{name}"] = [getattr(m, name)]
        roles["group_by"] = list(self.spec.group_by)
        return roles

    def needed_columns(self) -> list[str]:
        return list(dict.fromkeys(c for cols in self.columns().values() for c in cols))

    def check_data(self) -> DataInfo:
        info = validate_data(
            self.spec.data, needs_target=False, group_by=self.spec.group_by, check_features=False
        )
        if self.spec.model.formula is not None:
            check_engine()
        self.check_columns(info)
        self._check_trial_columns(info)
        info.features = [c for c in self.needed_columns() if c not in self.spec.group_by]
        info.target = self.spec.model.endog or self.spec.data.target
        return info

    def check_columns(self, info: DataInfo) -> None:
        """Every column the spec names exists (a formula's bare names included: one that is
        not a column would be looked up among the evaluation's builtins) and the numeric
        roles are numeric. Raises DataError naming the field."""
        schema = info.source.columns
        roles = self.columns()
        for role, cols in roles.items():
            for c in cols:
                if c not in schema:
                    close = difflib.get_close_matches(c, list(schema), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise DataError(
                        f"{role}: column {c!r} is not in {info.source.source!r}{hint}"
                        f" (columns: {', '.join(list(schema)[:30])})"
                    )
        m = self.spec.model
        numeric = [
            ("model.endog", roles.get("model.endog", [])),
            ("model.exog", roles.get("model.exog", [])),
        ]
        if m.formula is not None:
            numeric.append(("model.formula (response)", analyze_formula(m.formula).lhs))
        numeric += [
            (f"model.{n}", [getattr(m, n)])
            for n in ("weights", "offset", "exposure", "trials")
            if getattr(m, n)
        ]
        for role, cols in numeric:
            for c in cols:
                if not is_numeric_dtype(schema[c]):
                    raise DataError(
                        f"{role}: column {c!r} has dtype {schema[c]}, but it must be "
                        "numeric (or bool); encode it as numbers first"
                    )

    def _check_trial_columns(self, info: DataInfo) -> None:
        """The column checks for every value a ``tune`` search may give a trial (each choice of
        a ``model.formula`` space, not a sample of them), before any cluster work."""
        tune = self.spec.tune
        if tune is None:
            return
        from distml.spec.load import load_spec
        from distml.spec.tune import checked_values, show_value

        base = self.spec.to_dict()
        base.pop("tune", None)
        for path, entry in tune.space.items():
            for value in checked_values(entry):
                try:
                    trial = load_spec(base, {path: value})
                    Job(trial).check_columns(info)
                except (DataError, SpecError) as e:
                    raise type(e)(
                        f"tune.space.{path}: the value {show_value(value)} does not "
                        f"fit the data ({e.message.rstrip('.')})"
                    ) from None

    def run(self, ctx: RunContext) -> JobOutput:
        from distml.jobs.statsmodels import fit as mm
        from distml.jobs.statsmodels import many

        cfg = mm.FitConfig.from_spec(self.spec)
        path, reason = self.choose_path(ctx.data)
        ctx.log.info("statsmodels %s: %s path (%s)", self.spec.model.method, path, reason)
        try:
            if path == "suffstats":
                from distml.jobs.statsmodels import suffstats as _suffstats

                out = _suffstats.run_job(self.spec, cfg, ctx)
            elif path == "many_models":
                out = many.run_many(self.spec, cfg, ctx)
            else:
                out = many.run_single(self.spec, cfg, ctx)
        except (DataError, SpecError, JobFailed):
            raise
        except Exception as e:
            cause = getattr(e, "cause", None) or e
            raise JobFailed(
                f"statsmodels {self.spec.model.method} failed: "
                f"{type(cause).__name__}: {one_line(cause, 400)}"
            ) from e
        out.info.setdefault("execution", {}).update(path=path, reason=reason)
        return out

    def choose_path(self, info: DataInfo) -> tuple[str, str]:
        m = self.spec.model
        if self.spec.group_by:
            return "many_models", f"group_by {self.spec.group_by}: one fit per group, batched"
        if m.solver == "suffstats":
            return "suffstats", "model.solver is suffstats"
        size = sum(info.source.sizes) if info.source.sizes else 0
        rowwise = m.formula is None or analyze_formula(m.formula).rowwise
        if (
            m.solver == "auto"
            and m.method in ("ols", "wls")
            and m.cov_type != "HAC"
            and self.spec.data.split == "none"
            and rowwise
            and size > SUFFSTATS_AUTO_BYTES
        ):
            return "suffstats", (
                f"input is {size / 2**30:.1f} GiB (> 1 GiB): exact OLS from "
                "merged per-partition sufficient statistics"
            )
        return "single", "one model: fitted by statsmodels in one Ray task"

    def fit_predict_fold(self, train, test) -> dict:
        """Fit one model on the rows of ``train`` and predict the rows of ``test`` (the
        ``ladder`` kind's folds; see :meth:`distml.jobs.base.Job.fit_predict_fold`). The formula
        is evaluated as in a single fit; without one, the target is regressed on
        ``model.exog`` (default: every feature column, categorical ones as 0/1 indicators
        without their first level) with a constant. logit, probit and binomial glm are
        classifiers of a 0/1 (or two-class) target; the other methods predict values."""
        import numpy as np
        import pandas as pd

        from distml.jobs.statsmodels import fit as mm

        m, d = self.spec.model, self.spec.data
        if m.method in TIME_SERIES or self.spec.group_by:
            raise SpecError(
                f"model.method {m.method} with group_by {self.spec.group_by} cannot "
                "be fitted on cross-validation folds; use a regression method and "
                "no group_by"
            )
        cfg = mm.FitConfig.from_spec(self.spec)
        target = analyze_formula(m.formula).lhs[0] if m.formula else (m.endog or d.target)
        frame = pd.concat([train, test], ignore_index=True)
        n = len(train)
        classes = None
        y_all = frame[target]
        if cfg.classification:
            classes = class_order(pd.unique(y_all).tolist())
            if len(classes) != 2:
                raise DataError(
                    f"model.method {m.method} needs a target with 2 classes; "
                    f"{target!r} has {len(classes)}"
                )
            codes = y_all.map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
            frame = frame.assign(**{target: codes})
            y_true = codes[n:]
        else:
            y_true = y_all.to_numpy(dtype=np.float64)[n:]
        extra = {c: frame[c].to_numpy(dtype=np.float64) for c in cfg.extras}
        tr = {c: v[:n] for c, v in extra.items()}
        cls = mm.model_class(cfg.method)
        if cfg.formula:
            model = cls.from_formula(
                cfg.formula,
                data=frame.iloc[:n],
                eval_env=formula_namespace(),
                missing="raise",
                **mm.model_kwargs(cfg, tr),
            )
            X_test: Any = frame.iloc[n:]
        else:
            skip = {target, *cfg.extras}
            cols = list(
                m.exog
                or d.features
                or [c for c in frame.columns if c not in skip and c not in d.exclude]
            )
            X = frame[cols]
            cats = [
                c
                for c in cols
                if not pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c])
            ]
            if cats:
                X = pd.get_dummies(X, columns=cats, drop_first=True, dtype=np.float64)
            X = X.astype(np.float64)
            if m.add_constant:
                X.insert(0, "const", 1.0)
            model = cls(
                y_all.iloc[:n].to_numpy(dtype=np.float64)
                if classes is None
                else frame[target].iloc[:n].to_numpy(dtype=np.float64),
                X.iloc[:n],
                missing="raise",
                **mm.model_kwargs(cfg, tr),
            )
            X_test = X.iloc[n:]
        res = model.fit(**mm.fit_kwargs(cfg, tr))
        kw = {k: extra[c][n:] for k, c in (("offset", cfg.offset), ("exposure", cfg.exposure)) if c}
        pred = np.asarray(res.predict(X_test, **kw), dtype=np.float64)
        if len(pred) != len(test):
            raise DataError(
                f"{len(test) - len(pred)} of {len(test)} rows could not be "
                "predicted (missing values in the model's columns)"
            )
        if classes is None:
            return {
                "task": "regression",
                "y_true": y_true,
                "pred": pred,
                "proba": None,
                "classes": None,
            }
        return {
            "task": "classification",
            "y_true": y_true,
            "pred": (pred >= 0.5).astype(np.int64),
            "proba": np.column_stack([1 - pred, pred]),
            "classes": [c.item() if hasattr(c, "item") else c for c in classes],
        }


SUFFSTATS_AUTO_BYTES = 1 << 30
