"""Kind ``statsmodels``: statistical models with full inference output, one or thousands at once.

Three execution paths, chosen before any work starts and recorded in ``manifest.json``:

- **single**: no ``group_by``: one Ray task reads the columns it needs and fits the model with
  statsmodels itself; ``summary.txt`` is statsmodels' own summary.
- **many-models**: ``group_by``: the rows are partitioned by group on the workers and the
  groups are fitted in batches, many per Ray task (see :mod:`distml.jobs._manymodels`).
- **suffstats**: an OLS/WLS too big for one worker: exact per-partition sufficient statistics
  merged on the cluster (see :mod:`distml.runtime.suffstats`).

Every estimate, standard error, test statistic, p-value and interval comes from statsmodels'
results objects; distml only arranges the data and tabulates what statsmodels returns. The
spec is data: a formula is parsed without being evaluated, and only column names, numbers,
operators and a fixed set of functions may appear in it (no attribute access, no builtins).
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distml.errors import DataError, JobFailed, SpecError
from distml.jobs.base import Job as BaseJob
from distml.jobs.base import JobOutput, RunContext
from distml.runtime.data import DataInfo, is_numeric_dtype, validate_data
from distml.spec.base import JobSpec, StrictModel

REGRESSION = ("ols", "wls", "glm", "logit", "probit", "poisson", "negativebinomial", "quantreg")
TIME_SERIES = ("arima", "sarimax")
DISCRETE = ("logit", "probit", "poisson", "negativebinomial")
ROBUST_COV = ("HC0", "HC1", "HC2", "HC3", "cluster", "HAC")
TS_COV = ("opg", "oim", "approx", "robust", "robust_oim", "robust_approx", "none")
#: GLM family → links distml accepts (the ones statsmodels lists as safe for the family).
FAMILY_LINKS: dict[str, tuple[str, ...]] = {
    "gaussian": ("identity", "log", "inverse_power"),
    "binomial": ("logit", "probit", "cauchy", "log", "logc", "cloglog", "loglog", "identity"),
    "poisson": ("log", "identity", "sqrt"),
    "gamma": ("inverse_power", "identity", "log"),
    "negativebinomial": ("log", "cloglog", "identity"),
    "tweedie": ("log",),
    "inverse_gaussian": ("inverse_squared", "inverse_power", "identity", "log"),
}
#: Functions a formula may call. patsy provides C, I, Q, the contrasts and the stateful
#: transforms; ``np.<name>`` may use the numpy functions listed here.
PATSY_FUNCS = {"C", "I", "Q", "Treatment", "Sum", "Diff", "Helmert", "Poly", "center",
               "standardize", "scale", "bs", "cr", "cc", "te"}
STATEFUL_FUNCS = {"center", "standardize", "scale", "bs", "cr", "cc", "te"}
NUMPY_FUNCS = {"log", "log1p", "log2", "log10", "exp", "expm1", "sqrt", "square", "abs",
               "absolute", "sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh",
               "tanh", "power", "floor", "ceil", "sign", "maximum", "minimum", "clip", "where"}
_OPS = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Constant,
        ast.keyword, ast.Load, ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.IfExp,
        ast.List, ast.Tuple)

Method = Literal["ols", "wls", "glm", "logit", "probit", "poisson", "negativebinomial",
                 "quantreg", "arima", "sarimax"]
CovType = Literal["nonrobust", "HC0", "HC1", "HC2", "HC3", "cluster", "HAC", "opg", "oim",
                  "approx", "robust", "robust_oim", "robust_approx", "none"]


class StatsmodelsModel(StrictModel):
    """The ``model`` section of a statsmodels job."""

    method: Method = Field("ols", description="Estimator: ols, wls, glm, logit, probit, poisson, "
                                              "negativebinomial, quantreg, arima, sarimax.")
    formula: str | None = Field(None, min_length=3, description="patsy formula, e.g. "
                                "'y ~ x1 + C(region)' (regression methods).")
    endog: str | None = Field(None, description="Array interface: the response column "
                                                "(default: data.target).")
    exog: list[str] | None = Field(None, description="Array interface: regressor columns "
                                                     "(default: data.features).")
    add_constant: bool = Field(True, description="Array interface: prepend a 'const' column "
                                                 "(statsmodels add_constant).")
    family: Literal["gaussian", "binomial", "poisson", "gamma", "negativebinomial", "tweedie",
                    "inverse_gaussian"] | None = Field(None, description="glm family (default "
                                                                         "gaussian).")
    link: Literal["identity", "log", "logit", "probit", "cauchy", "cloglog", "loglog", "logc",
                  "inverse_power", "inverse_squared", "sqrt"] | None = Field(
        None, description="glm link (default: the family's canonical link).")
    var_power: float | None = Field(None, ge=1, le=2, description="tweedie variance power.")
    family_alpha: float | None = Field(None, gt=0, description="negativebinomial glm family "
                                                               "dispersion (statsmodels' alpha).")
    weights: str | None = Field(None, description="Weights column: wls weights, glm var_weights.")
    offset: str | None = Field(None, description="Offset column (glm, poisson, negativebinomial).")
    exposure: str | None = Field(None, description="Exposure column (glm, poisson, "
                                                   "negativebinomial); log(exposure) is offset.")
    q: float = Field(0.5, gt=0, lt=1, description="quantreg quantile.")
    order: tuple[int, int, int] = Field((1, 0, 0), description="arima/sarimax (p, d, q).")
    seasonal_order: tuple[int, int, int, int] | None = Field(
        None, description="arima/sarimax seasonal (P, D, Q, s).")
    trend: Literal["n", "c", "t", "ct"] | None = Field(None, description="arima/sarimax trend.")
    time: str | None = Field(None, description="Time column the rows are sorted by "
                                               "(time series; otherwise row order).")
    forecast_steps: int = Field(0, ge=0, le=100_000, description="Time series: steps to "
                                "forecast into tables/forecast.parquet.")
    cov_type: CovType = Field("nonrobust", description="Covariance: nonrobust, HC0-HC3, cluster "
                              "(cov_groups), HAC (maxlags); time series also opg, oim, approx, "
                              "robust.")
    cov_groups: str | None = Field(None, description="Cluster column for cov_type cluster.")
    maxlags: int | None = Field(None, ge=0, description="HAC lags (cov_type HAC).")
    use_t: bool | None = Field(None, description="t instead of normal for inference "
                                                 "(default: statsmodels' choice).")
    alpha: float = Field(0.05, gt=0, lt=1, description="Confidence intervals are 1 - alpha.")
    missing: Literal["drop", "raise"] = Field(
        "drop", description="Rows with a missing value: drop them (counted in model_stats) or "
                            "fail (the group, or the job for a single model).")
    maxiter: int | None = Field(None, ge=1, le=100_000, description="Iteration limit of "
                                "iterative fits (default: statsmodels').")
    min_rows: int | None = Field(None, ge=1, description="Groups with fewer rows fail with "
                                                         "an error instead of being fitted.")
    groups_per_task: int | None = Field(None, ge=1, description="Groups fitted per Ray task "
                                        "(default: chosen from group count and cluster CPUs).")
    solver: Literal["auto", "statsmodels", "suffstats"] = Field(
        "auto", description="auto: the vectorised engine for many-models OLS/WLS/GLM and "
                            "the scaled QR for OLS/WLS; statsmodels: statsmodels' own solvers "
                            "everywhere; suffstats (ols/wls/glm without group_by): merged "
                            "per-partition R factors (distributed IRLS for glm) for data bigger "
                            "than a worker, picked by auto above 1 GiB for ols/wls.")

    @field_validator("formula")
    @classmethod
    def _formula_syntax(cls, v: str | None) -> str | None:
        if v is not None:
            analyze_formula(v)  # raises ValueError with the parse error
        return v


class Spec(JobSpec):
    """A statsmodels job: one model, or one per group with group_by."""

    kind: Literal["statsmodels"]
    group_by: list[str] = Field(default_factory=list,
                                description="Fit one model per group of these columns.")
    model: StatsmodelsModel = Field(default_factory=StatsmodelsModel)

    @field_validator("group_by")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({c for c in v if v.count(c) > 1})
        if dup:
            raise ValueError(f"must list each column once; got duplicates {dup}")
        return v

    @model_validator(mode="after")
    def _checks(self) -> "Spec":
        m, d = self.model, self.data
        if "split" not in d.model_fields_set:
            d.split = "none"  # inference uses every row unless a split is asked for
        ts = m.method in TIME_SERIES
        if m.formula is not None:
            if ts:
                raise ValueError(f"model.formula is not supported for method {m.method}; name "
                                 "the series with model.endog (and regressors with model.exog)")
            for name, value in (("model.endog", m.endog), ("model.exog", m.exog),
                                ("data.target", d.target), ("data.features", d.features)):
                if value is not None:
                    raise ValueError(f"model.formula and {name} conflict: the formula names the "
                                     f"response and regressors; got {name}={value!r}; drop one")
        else:
            if m.endog and d.target and m.endog != d.target:
                raise ValueError(f"model.endog and data.target conflict; got {m.endog!r} and "
                                 f"{d.target!r}; set one")
            if not (m.endog or d.target):
                raise ValueError("model.formula or model.endog is required (e.g. formula: "
                                 "'y ~ x1 + x2', or endog: y with exog: [x1, x2])")
            if m.exog is not None and d.features is not None and m.exog != d.features:
                raise ValueError("model.exog and data.features conflict; set one")
            if not ts and not (m.exog or d.features or m.add_constant):
                raise ValueError(f"model.exog is required for method {m.method} with the array "
                                 "interface (or add_constant: true for an intercept-only model)")
        _check_method_fields(m)
        if d.test_source is not None:
            raise ValueError("data.test_source is not used by kind statsmodels; for "
                             "out-of-sample figures set data.split (e.g. {valid: 0.2})")
        if ts and m.forecast_steps and (m.exog or d.features):
            raise ValueError("model.forecast_steps with exogenous regressors (model.exog) needs "
                             "their future values, which a spec cannot carry yet; drop "
                             "model.exog or model.forecast_steps")
        if ts and d.split != "none":
            raise ValueError(f"data.split is not supported for method {m.method}; use "
                             "model.forecast_steps for out-of-sample figures")
        if m.solver == "suffstats":
            if m.method not in ("ols", "wls", "glm") or self.group_by:
                raise ValueError("model.solver suffstats needs method ols, wls or glm and no "
                                 f"group_by; got method {m.method!r}, group_by {self.group_by}")
            if m.cov_type == "HAC" or d.split != "none":
                raise ValueError("model.solver suffstats supports cov_type nonrobust, HC0-HC3 "
                                 "and cluster, and no data.split")
            if m.method == "glm":
                _check_out_of_core_glm(m)
            if m.formula is not None and not analyze_formula(m.formula).rowwise:
                raise ValueError("model.solver suffstats needs a row-wise formula (no center(), "
                                 "standardize(), splines or explicit contrasts); got "
                                 f"{m.formula!r}")
        for col in self.group_by:
            if col in (m.endog, d.target, m.weights, m.offset, m.exposure, m.time):
                raise ValueError(f"group_by column {col!r} is also a model column; group "
                                 "columns are constant within each group")
        return self


def _check_out_of_core_glm(m: StatsmodelsModel) -> None:
    """What distributed IRLS covers: the vectorised engine's families and links, nonrobust."""
    from distml.jobs._vectorised import GLM_LINKS

    family = m.family or "gaussian"
    if family not in GLM_LINKS:
        raise ValueError(f"model.solver suffstats fits glm families {', '.join(GLM_LINKS)}; "
                         f"got model.family {family!r}")
    if m.link is not None and m.link not in GLM_LINKS[family]:
        raise ValueError(f"model.solver suffstats fits family {family} with links "
                         f"{', '.join(GLM_LINKS[family])}; got model.link {m.link!r}")
    if m.cov_type != "nonrobust":
        raise ValueError("model.solver suffstats fits glm with cov_type nonrobust; got "
                         f"{m.cov_type!r}")


def _check_method_fields(m: StatsmodelsModel) -> None:
    """Fields that only some methods use must not be set for the others."""
    only = {"family": ("glm",), "link": ("glm",), "var_power": ("glm",),
            "family_alpha": ("glm",), "weights": ("wls", "glm"),
            "offset": ("glm", "poisson", "negativebinomial"),
            "exposure": ("glm", "poisson", "negativebinomial"),
            "seasonal_order": TIME_SERIES, "trend": TIME_SERIES}
    for name, methods in only.items():
        if getattr(m, name) is not None and m.method not in methods:
            raise ValueError(f"model.{name} applies to method {' / '.join(methods)} only; got "
                             f"method {m.method!r}; drop model.{name}")
    for name, default in (("q", 0.5), ("order", (1, 0, 0)), ("forecast_steps", 0)):
        if name in m.model_fields_set and getattr(m, name) != default:
            methods = ("quantreg",) if name == "q" else TIME_SERIES
            if m.method not in methods:
                raise ValueError(f"model.{name} applies to method {' / '.join(methods)} only; "
                                 f"got method {m.method!r}")
    if m.method == "wls" and not m.weights:
        raise ValueError("model.weights is required for method wls; name the weights column")
    family = m.family or "gaussian"
    if m.link is not None and m.link not in FAMILY_LINKS[family]:
        raise ValueError(f"model.link {m.link!r} is not valid for family {family}; use one of "
                         f"{', '.join(FAMILY_LINKS[family])}")
    if m.var_power is not None and family != "tweedie":
        raise ValueError("model.var_power applies to family tweedie only")
    if m.family_alpha is not None and family != "negativebinomial":
        raise ValueError("model.family_alpha applies to family negativebinomial only")
    ts = m.method in TIME_SERIES
    if ts and m.cov_type not in ("nonrobust",) + TS_COV:
        raise ValueError(f"model.cov_type {m.cov_type!r} is not available for {m.method}; use "
                         f"nonrobust (statsmodels' default) or one of {', '.join(TS_COV)}")
    if not ts and m.cov_type in TS_COV:
        raise ValueError(f"model.cov_type {m.cov_type!r} applies to arima/sarimax only; use "
                         f"nonrobust or one of {', '.join(ROBUST_COV)}")
    if m.method == "quantreg" and m.cov_type != "nonrobust":
        raise ValueError("model.cov_type must be nonrobust for quantreg (statsmodels' quantreg "
                         "uses its own kernel-based sandwich); got " + repr(m.cov_type))
    if (m.cov_type == "cluster") != bool(m.cov_groups):
        raise ValueError("model.cov_type cluster and model.cov_groups go together; got cov_type "
                         f"{m.cov_type!r} and cov_groups {m.cov_groups!r}")
    if (m.cov_type == "HAC") != (m.maxlags is not None):
        raise ValueError("model.cov_type HAC and model.maxlags go together; got cov_type "
                         f"{m.cov_type!r} and maxlags {m.maxlags!r}")
    if m.seasonal_order is not None and m.seasonal_order[3] < 2 and any(m.seasonal_order[:3]):
        raise ValueError("model.seasonal_order period s must be >= 2; got "
                         f"{list(m.seasonal_order)}")


# ---------------------------------------------------------------------- formulas

@dataclass
class FormulaInfo:
    """What a formula uses, found by parsing it (nothing is evaluated)."""

    lhs: list[str]  # columns on the left side
    rhs: list[str]  # columns on the right side
    rowwise: bool  # every factor is computed row by row (no stateful transforms, no contrasts)
    categorical: dict[str, str] = field(default_factory=dict)  # factor code -> column, for C(col)
    factors: dict[str, list[str]] = field(default_factory=dict)  # factor code -> columns

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(self.lhs + self.rhs))


def analyze_formula(formula: str) -> FormulaInfo:
    """Parse ``formula`` with patsy (no evaluation) and check every factor is safe to evaluate.

    >>> analyze_formula("np.log(y) ~ x + C(region)").columns
    ['y', 'x', 'region']

    Raises ValueError with the patsy message (bad syntax) or naming the construct that is not
    allowed (attribute access other than ``np.<function>``, subscripts, unknown functions...).
    """
    import patsy

    try:
        desc = patsy.ModelDesc.from_formula(formula)
    except Exception as e:  # PatsyError, and patsy's own asserts on odd input
        text = " ".join(str(e).split()) or f"{type(e).__name__} in patsy's parser"
        raise ValueError(f"model.formula cannot be parsed: {text}; got {formula!r}") from None
    if len(desc.lhs_termlist) != 1 or len(desc.lhs_termlist[0].factors) != 1:
        raise ValueError("model.formula must have exactly one response on the left of '~' "
                         f"(e.g. 'y ~ x'); got {formula!r}")
    info = FormulaInfo([], [], True)
    for side, terms in (("lhs", desc.lhs_termlist), ("rhs", desc.rhs_termlist)):
        for term in terms:
            for factor in term.factors:
                cols, rowwise, cat = _check_factor(factor.code, formula)
                info.factors[factor.code] = cols
                getattr(info, side).extend(c for c in cols if c not in getattr(info, side))
                info.rowwise &= rowwise
                if cat is not None:
                    info.categorical[factor.code] = cat
    return info


def _check_factor(code: str, formula: str) -> tuple[list[str], bool, str | None]:
    """Columns used by one factor, whether it is row-wise, and its column if it is C(col)."""
    try:
        tree = ast.parse(code, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError(f"model.formula term {code!r} is not a valid expression; got "
                         f"{formula!r}") from None
    cols: list[str] = []
    rowwise = True
    funcs: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _call_name(node.func)
            if name is None:
                raise ValueError(f"model.formula term {code!r} calls something that is not an "
                                 f"allowed function; allowed: {', '.join(sorted(PATSY_FUNCS))} "
                                 "and numpy functions such as np.log, np.exp, np.sqrt (the list "
                                 "is in docs/statsmodels.md)")
            funcs.add(id(node.func))
            if isinstance(node.func, ast.Attribute):
                funcs.add(id(node.func.value))
            if name in STATEFUL_FUNCS or name in ("Treatment", "Sum", "Diff", "Helmert", "Poly"):
                rowwise = False
            if name == "C" and (len(node.args) != 1 or node.keywords):
                rowwise = False  # explicit contrasts/levels: fit each group from its formula
            if name == "Q":
                if len(node.args) != 1 or not isinstance(node.args[0], ast.Constant) \
                        or not isinstance(node.args[0].value, str):
                    raise ValueError(f"model.formula term {code!r}: Q() takes one quoted "
                                     "column name")
                cols.append(node.args[0].value)
            if any(isinstance(a, ast.Starred) for a in node.args):
                raise ValueError(f"model.formula term {code!r} may not use *args")
        elif isinstance(node, ast.Name):
            if node.id.startswith("__"):
                raise ValueError(f"model.formula term {code!r} may not use {node.id!r}")
            if id(node) not in funcs and node.id not in cols:
                cols.append(node.id)
        elif isinstance(node, ast.Attribute):
            if id(node) not in funcs:
                raise ValueError(f"model.formula term {code!r} may not access attributes "
                                 f"(.{node.attr}); only np.<function>(...) calls are allowed")
        elif not isinstance(node, _OPS + (ast.Call,)):
            raise ValueError(f"model.formula term {code!r} uses {type(node).__name__}, which "
                             "a formula may not contain; use columns, numbers, operators and "
                             "the allowed functions")
    cat = None
    body = tree.body
    if isinstance(body, ast.Call) and _call_name(body.func) == "C" and len(body.args) == 1 \
            and not body.keywords and len(cols) == 1 and \
            (isinstance(body.args[0], ast.Name) or _call_name(getattr(body.args[0], "func",
                                                                      None)) == "Q"):
        cat = cols[0]
    return cols, rowwise, cat


def _call_name(func: Any) -> str | None:
    if isinstance(func, ast.Name) and func.id in PATSY_FUNCS:
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
            and func.value.id in ("np", "numpy") and func.attr in NUMPY_FUNCS:
        return f"np.{func.attr}"
    return None


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
        for name in ("weights", "offset", "exposure", "cov_groups", "time"):
            if getattr(m, name):
                roles[f"model.{name}"] = [getattr(m, name)]
        roles["group_by"] = list(self.spec.group_by)
        return roles

    def needed_columns(self) -> list[str]:
        return list(dict.fromkeys(c for cols in self.columns().values() for c in cols))

    def check_data(self) -> DataInfo:
        info = validate_data(self.spec.data, needs_target=False, group_by=self.spec.group_by,
                             check_features=False)
        schema = info.source.columns
        roles = self.columns()
        for role, cols in roles.items():
            for c in cols:
                if c not in schema:
                    close = difflib.get_close_matches(c, list(schema), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise DataError(f"{role}: column {c!r} is not in {info.source.source!r}{hint}"
                                    f" (columns: {', '.join(list(schema)[:30])})")
        m = self.spec.model
        numeric = [("model.endog", roles.get("model.endog", [])),
                   ("model.exog", roles.get("model.exog", []))]
        if m.formula is not None:
            numeric.append(("model.formula (response)", analyze_formula(m.formula).lhs))
        numeric += [(f"model.{n}", [getattr(m, n)]) for n in ("weights", "offset", "exposure")
                    if getattr(m, n)]
        for role, cols in numeric:
            for c in cols:
                if not is_numeric_dtype(schema[c]):
                    raise DataError(f"{role}: column {c!r} has dtype {schema[c]}, but it must be "
                                    "numeric (or bool); encode it as numbers first")
        info.features = [c for c in self.needed_columns() if c not in self.spec.group_by]
        info.target = m.endog or self.spec.data.target
        return info

    def run(self, ctx: RunContext) -> JobOutput:
        from distml.jobs import _manymodels as mm

        cfg = mm.FitConfig.from_spec(self.spec)
        path, reason = self.choose_path(ctx.data)
        ctx.log.info("statsmodels %s: %s path (%s)", self.spec.model.method, path, reason)
        try:
            if path == "suffstats":
                from distml.runtime import suffstats

                out = suffstats.run_job(self.spec, cfg, ctx)
            elif path == "many_models":
                out = mm.run_many(self.spec, cfg, ctx)
            else:
                out = mm.run_single(self.spec, cfg, ctx)
        except (DataError, SpecError, JobFailed):
            raise
        except Exception as e:
            cause = getattr(e, "cause", None) or e
            raise JobFailed(f"statsmodels {self.spec.model.method} failed: "
                            f"{type(cause).__name__}: {str(cause).strip()[:400]}") from e
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
        if (m.solver == "auto" and m.method in ("ols", "wls") and m.cov_type != "HAC"
                and self.spec.data.split == "none" and rowwise and size > SUFFSTATS_AUTO_BYTES):
            return "suffstats", (f"input is {size / 2**30:.1f} GiB (> 1 GiB): exact OLS from "
                                 "merged per-partition sufficient statistics")
        return "single", "one model: fitted by statsmodels in one Ray task"


SUFFSTATS_AUTO_BYTES = 1 << 30
