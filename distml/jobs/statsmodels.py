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
Every bare name must be a column of the data (checked before the cluster starts, for the spec's
formula and for every formula a ``tune`` search may sample), and patsy evaluates terms in a
namespace where every Python builtin is shadowed by an inert placeholder
(:func:`formula_namespace`).
"""

from __future__ import annotations

import ast
import builtins
import difflib
import os
import re
import sys
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
#: np.<f> keywords a formula may pass (``np.clip``'s bounds); ``out=``, ``dtype=``... are refused:
#: ``out=`` writes into a data column, ``dtype=object`` turns numbers into unbounded Python ints.
NUMPY_KEYWORDS = {"a_min", "a_max", "min", "max"}
#: positional arguments each np.<f> takes at most (one more would be the ufunc's ``out``).
NUMPY_ARITY = {**{f: 1 for f in NUMPY_FUNCS}, "power": 2, "maximum": 2, "minimum": 2, "clip": 3,
               "where": 3}
#: largest |exponent| of ``**`` / ``np.power``: a literal, so ``9**9**9**9`` cannot run for ever.
MAX_EXPONENT = 100
_INT64 = 2**63
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
    trials: str | None = Field(None, description="glm binomial with a proportion response: "
                               "the column of trials per row (the response then is successes "
                               "/ trials, as R's glm weights).")
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
        _check_binomial_counts(m, d)
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


def _check_binomial_counts(m: StatsmodelsModel, d) -> None:
    """A counts response (successes + failures, or a proportion with model.trials) is a
    binomial GLM's, fitted in memory, without a split."""
    counts = m.formula is not None and analyze_formula(m.formula).counts
    if not (counts or m.trials):
        return
    what = (f"a two-column response (successes + failures) in model.formula {m.formula!r}"
            if counts else f"model.trials ({m.trials!r})")
    if m.method != "glm" or (m.family or "gaussian") != "binomial":
        raise ValueError(f"{what} needs method glm with family binomial; got method "
                         f"{m.method!r}, family {m.family!r}")
    if counts and m.trials:
        raise ValueError("model.trials and a successes + failures response conflict: the two "
                         "columns already give the trials; drop model.trials")
    if m.trials and m.formula is None:
        raise ValueError("model.trials needs model.formula (e.g. 'share ~ x1 + x2' with the "
                         "proportion on the left)")
    if m.trials and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", m.formula.split("~")[0].strip()):
        raise ValueError("model.trials needs a plain column as the response of model.formula "
                         f"(the proportion of successes); got {m.formula!r}")
    if d.split != "none":
        raise ValueError(f"{what}: data.split is not supported with a counts response")
    if m.solver == "suffstats":
        raise ValueError(f"{what}: model.solver suffstats does not fit counts responses")


def counts_formula(m: StatsmodelsModel) -> str | None:
    """The formula statsmodels fits for ``model.trials``: the proportion turned into successes
    + failures (``I(p * n) + I(n - p * n) ~ ...``), which equals R's ``glm(p ~ ..., weights =
    n)`` estimates and gives the binomial likelihood of the counts."""
    if not m.trials or m.formula is None:
        return m.formula
    lhs, rhs = (part.strip() for part in m.formula.split("~", 1))
    n = m.trials
    return f"I({lhs} * {n}) + I({n} - {lhs} * {n}) ~ {rhs}"


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
            "seasonal_order": TIME_SERIES, "trend": TIME_SERIES, "trials": ("glm",)}
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
    counts: bool = False  # 'successes + failures ~ ...': a two-column binomial response

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
    lhs = desc.lhs_termlist
    if len(lhs) not in (1, 2) or any(len(t.factors) != 1 for t in lhs):
        raise ValueError("model.formula must have exactly one response on the left of '~' "
                         "(e.g. 'y ~ x'), or successes + failures for a binomial glm (e.g. "
                         f"'NSUCC + NFAIL ~ x'); got {formula!r}")
    info = FormulaInfo([], [], True, counts=len(lhs) == 2)
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
    """Columns used by one factor, whether it is row-wise, and its column if it is C(col).

    Besides the allowed names and calls, a term may not compute unbounded values: a power's
    exponent is a small number literal and its base holds no other power (``9**9**9**9``),
    arithmetic needs a column (``9**99 * 9**99``, ``'a' * 10**9``), integer literals fit in 64
    bits, and ``np.<f>`` takes no ``out=``/``dtype=`` (nor an extra positional ``out``).
    """
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
                _check_numpy_call(node, name, code)
            if name in STATEFUL_FUNCS or name in ("Treatment", "Sum", "Diff", "Helmert", "Poly"):
                rowwise = False
            if name == "C" and (len(node.args) != 1 or node.keywords):
                rowwise = False  # explicit contrasts/levels: fit each group from its formula
            if name == "Q":
                if len(node.args) != 1 or not isinstance(node.args[0], ast.Constant) \
                        or not isinstance(node.args[0].value, str):
                    raise ValueError(f"model.formula term {code!r}: Q() takes one quoted "
                                     "column name")
                if node.args[0].value.startswith("__"):
                    raise ValueError(f"model.formula term {code!r} may not use "
                                     f"{node.args[0].value!r}")
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
        elif isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Pow):
                _check_power(node.left, node.right, node, code)
            for side in (node.left, node.right):
                if isinstance(side, (ast.List, ast.Tuple)) or (
                        isinstance(side, ast.Constant) and isinstance(side.value, (str, bytes))):
                    raise ValueError(f"model.formula term {code!r}: {_piece(node)!r} computes "
                                     "with text or a list; arithmetic takes columns and numbers")
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, int) and abs(node.value) >= _INT64:
                raise ValueError(f"model.formula term {code!r}: the number {_piece(node)!r} "
                                 "does not fit in 64 bits")
        elif not isinstance(node, _OPS + (ast.Call,)):
            raise ValueError(f"model.formula term {code!r} uses {type(node).__name__}, which "
                             "a formula may not contain; use columns, numbers, operators and "
                             "the allowed functions")
    _check_arithmetic(tree, funcs, code)
    cat = None
    body = tree.body
    if isinstance(body, ast.Call) and _call_name(body.func) == "C" and len(body.args) == 1 \
            and not body.keywords and len(cols) == 1 and \
            (isinstance(body.args[0], ast.Name) or _call_name(getattr(body.args[0], "func",
                                                                      None)) == "Q"):
        cat = cols[0]
    return cols, rowwise, cat


def _piece(node: ast.AST, limit: int = 80) -> str:
    """The source of ``node`` for a message, shortened."""
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_power(node: ast.AST) -> bool:
    return (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow)) or \
        (isinstance(node, ast.Call) and _call_name(node.func) == "np.power")


def _check_power(base: ast.AST, exponent: ast.AST | None, node: ast.AST, code: str) -> None:
    """A power's exponent is a number literal of magnitude <= MAX_EXPONENT and its base holds
    no other power: ``9**9**9**9`` would otherwise compute for ever on the workers."""
    e = exponent
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, (ast.USub, ast.UAdd)):
        e = e.operand
    if not (isinstance(e, ast.Constant) and isinstance(e.value, (int, float))
            and not isinstance(e.value, bool) and abs(e.value) <= MAX_EXPONENT):
        raise ValueError(f"model.formula term {code!r}: the exponent of {_piece(node)!r} must "
                         f"be a number between -{MAX_EXPONENT} and {MAX_EXPONENT} (a computed "
                         "exponent, such as a tower 9**9**9, can run for ever)")
    if any(_is_power(n) for n in ast.walk(base)):
        raise ValueError(f"model.formula term {code!r}: {_piece(node)!r} is a power of a power, "
                         "which a formula may not contain; write a single power")


def _check_numpy_call(node: ast.Call, name: str, code: str) -> None:
    """np.<f> takes its inputs positionally: no ``out=`` (it writes into a data column), no
    ``dtype=`` (object dtype computes with unbounded Python ints), no extra positional out."""
    f = name.split(".", 1)[1]
    for kw in node.keywords:
        if kw.arg not in NUMPY_KEYWORDS:
            shown = "**" if kw.arg is None else f"{kw.arg}="
            raise ValueError(f"model.formula term {code!r}: {name}() may not take {shown} "
                             f"({_piece(node)!r}); pass the inputs positionally")
    if len(node.args) > NUMPY_ARITY[f]:
        raise ValueError(f"model.formula term {code!r}: {name}() takes at most "
                         f"{NUMPY_ARITY[f]} argument(s) ({_piece(node)!r}); a further one would "
                         "be its out= array")
    if f == "power":
        _check_power(node.args[0] if node.args else node,
                     node.args[1] if len(node.args) > 1 else None, node, code)


def _check_arithmetic(tree: ast.AST, funcs: set[int], code: str) -> None:
    """Every operator has a column among its operands: arithmetic on numbers alone
    (``9**99 * 9**99``, ``2 << 99``) makes Python integers of any size, which numpy then
    computes with as objects; a column keeps every value an int64 or a float."""
    nodes = list(ast.walk(tree))  # breadth first: a node's descendants come after it
    has_col: dict[int, bool] = {}
    for node in reversed(nodes):
        if isinstance(node, ast.Name):
            has_col[id(node)] = id(node) not in funcs
        elif isinstance(node, ast.Call) and _call_name(node.func) == "Q":
            has_col[id(node)] = True
        else:
            has_col[id(node)] = any(has_col[id(c)] for c in ast.iter_child_nodes(node))
        if isinstance(node, ast.BinOp) and not has_col[id(node)]:
            raise ValueError(f"model.formula term {code!r}: {_piece(node)!r} computes with "
                             "numbers alone; write the number itself (arithmetic needs a column)")


def _check_engine() -> None:
    """Formulas are checked with patsy's grammar, so they must be evaluated by patsy (not
    formulaic, whose grammar differs), whichever way statsmodels was told otherwise."""
    loaded = sys.modules.get("statsmodels.formula")
    if loaded is not None:  # what statsmodels will use, whatever set it
        setting = "statsmodels.formula.options.formula_engine"
        engine = getattr(loaded.options, "formula_engine", None) or "patsy"
    else:
        setting = "SM_FORMULA_ENGINE"
        engine = os.environ.get(setting) or "patsy"
    if engine != "patsy":
        raise SpecError(f"model.formula is evaluated with patsy, whose grammar distml checks; "
                        f"{setting}={engine} is not supported; use patsy")


def _call_name(func: Any) -> str | None:
    if isinstance(func, ast.Name) and func.id in PATSY_FUNCS:
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
            and func.value.id in ("np", "numpy") and func.attr in NUMPY_FUNCS:
        return f"np.{func.attr}"
    return None


class _Unavailable:
    """What a formula finds under a Python builtin's name: using it is a clean NameError."""

    __slots__ = ("_name",)

    def __init__(self, name: str):
        self._name = name

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise NameError(f"{self._name!r} is not available in a formula (only columns, numbers "
                        "and the allowed functions are)")

    __call__ = __iter__ = __bool__ = __index__ = __float__ = __int__ = _refuse

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # protocol probes (copy, pickle) see a plain object
            raise AttributeError(attr)
        return self._refuse()

    def __repr__(self) -> str:
        return f"<{self._name}: not available in a formula>"


def _q(name: str) -> Any:
    """patsy's ``Q("a b")`` without its fall-back to the evaluation's globals (which hold
    Python's builtins): the name is looked up among the columns and this namespace only."""
    try:
        return sys._getframe(1).f_locals[name]
    except KeyError:
        raise NameError(f"no column named {name!r}") from None


_NAMESPACE: dict[str, Any] = {}


def formula_namespace() -> dict[str, Any]:
    """The ``eval_env`` formulas are evaluated in: ``np`` with only the allowed numpy functions,
    and every other name patsy's ``eval`` could reach (Python's builtins, patsy's helpers that
    are not allowed functions) bound to a placeholder that refuses to be used.

    patsy evaluates a factor with Python's eval, empty globals and ``namespaces`` as locals: the
    empty globals get Python's builtins, so a name that is not a column would reach ``exit`` or ``__import__``. The
    namespaces are searched before the builtins, so shadowing every builtin there empties
    them; a dict is what statsmodels takes as ``eval_env`` (an EvalEnvironment is deprecated
    there) and what patsy and formulaic both search first. The columns come from the data.
    """
    _check_engine()
    hidden = set(vars(builtins)) | {"__builtins__"}
    if not _NAMESPACE or not hidden <= _NAMESPACE.keys():  # built once (builtins rarely grow)
        import types

        import numpy as np
        import patsy.eval

        hidden |= set(patsy.eval._builtins_dict)
        env: dict[str, Any] = {name: _Unavailable(name) for name in hidden - PATSY_FUNCS}
        allowed = types.SimpleNamespace(**{f: getattr(np, f) for f in sorted(NUMPY_FUNCS)})
        env.update(np=allowed, numpy=allowed, Q=_q)
        _NAMESPACE.clear()
        _NAMESPACE.update(env)
    return dict(_NAMESPACE)


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
        info = validate_data(self.spec.data, needs_target=False, group_by=self.spec.group_by,
                             check_features=False)
        if self.spec.model.formula is not None:
            _check_engine()
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
                    raise DataError(f"{role}: column {c!r} is not in {info.source.source!r}{hint}"
                                    f" (columns: {', '.join(list(schema)[:30])})")
        m = self.spec.model
        numeric = [("model.endog", roles.get("model.endog", [])),
                   ("model.exog", roles.get("model.exog", []))]
        if m.formula is not None:
            numeric.append(("model.formula (response)", analyze_formula(m.formula).lhs))
        numeric += [(f"model.{n}", [getattr(m, n)]) for n in ("weights", "offset", "exposure",
                                                               "trials")
                    if getattr(m, n)]
        for role, cols in numeric:
            for c in cols:
                if not is_numeric_dtype(schema[c]):
                    raise DataError(f"{role}: column {c!r} has dtype {schema[c]}, but it must be "
                                    "numeric (or bool); encode it as numbers first")

    def _check_trial_columns(self, info: DataInfo) -> None:
        """The column checks for every value a ``tune`` search may give a trial (each choice of
        a ``model.formula`` space, not a sample of them), before any cluster work."""
        tune = self.spec.tune
        if tune is None:
            return
        from distml.spec.load import load_spec
        from distml.tune.spec import checked_values, show_value

        base = self.spec.to_dict()
        base.pop("tune", None)
        for path, entry in tune.space.items():
            for value in checked_values(entry):
                try:
                    trial = load_spec(base, {path: value})
                    Job(trial).check_columns(info)
                except (DataError, SpecError) as e:
                    raise type(e)(f"tune.space.{path}: the value {show_value(value)} does not "
                                  f"fit the data ({e.message.rstrip('.')})") from None

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

    def fit_predict_fold(self, train, test) -> dict:
        """Fit one model on the rows of ``train`` and predict the rows of ``test`` (the
        ``ladder`` kind's folds; see :meth:`distml.jobs.base.Job.fit_predict_fold`). The formula
        is evaluated as in a single fit; without one, the target is regressed on
        ``model.exog`` (default: every feature column, categorical ones as 0/1 indicators
        without their first level) with a constant. logit, probit and binomial glm are
        classifiers of a 0/1 (or two-class) target; the other methods predict values."""
        import numpy as np
        import pandas as pd

        from distml.jobs import _manymodels as mm

        m, d = self.spec.model, self.spec.data
        if m.method in TIME_SERIES or self.spec.group_by:
            raise SpecError(f"model.method {m.method} with group_by {self.spec.group_by} cannot "
                            "be fitted on cross-validation folds; use a regression method and "
                            "no group_by")
        cfg = mm.FitConfig.from_spec(self.spec)
        target = analyze_formula(m.formula).lhs[0] if m.formula else (m.endog or d.target)
        frame = pd.concat([train, test], ignore_index=True)
        n = len(train)
        classes = None
        y_all = frame[target]
        if cfg.classification:
            classes = sorted(pd.unique(y_all).tolist(), key=lambda v: (str(type(v)), v))
            if len(classes) != 2:
                raise DataError(f"model.method {m.method} needs a target with 2 classes; "
                                f"{target!r} has {len(classes)}")
            codes = y_all.map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
            frame = frame.assign(**{target: codes})
            y_true = codes[n:]
        else:
            y_true = y_all.to_numpy(dtype=np.float64)[n:]
        extra = {c: frame[c].to_numpy(dtype=np.float64) for c in cfg.extras}
        tr = {c: v[:n] for c, v in extra.items()}
        cls = mm.model_class(cfg.method)
        if cfg.formula:
            model = cls.from_formula(cfg.formula, data=frame.iloc[:n], eval_env=formula_namespace(),
                                     missing="raise", **mm.model_kwargs(cfg, tr))
            X_test: Any = frame.iloc[n:]
        else:
            skip = {target, *cfg.extras}
            cols = list(m.exog or d.features or [c for c in frame.columns
                                                 if c not in skip and c not in d.exclude])
            X = frame[cols]
            cats = [c for c in cols if not pd.api.types.is_numeric_dtype(X[c])
                    or pd.api.types.is_bool_dtype(X[c])]
            if cats:
                X = pd.get_dummies(X, columns=cats, drop_first=True, dtype=np.float64)
            X = X.astype(np.float64)
            if m.add_constant:
                X.insert(0, "const", 1.0)
            model = cls(y_all.iloc[:n].to_numpy(dtype=np.float64) if classes is None
                        else frame[target].iloc[:n].to_numpy(dtype=np.float64),
                        X.iloc[:n], missing="raise", **mm.model_kwargs(cfg, tr))
            X_test = X.iloc[n:]
        res = model.fit(**mm.fit_kwargs(cfg, tr))
        kw = {k: extra[c][n:] for k, c in (("offset", cfg.offset), ("exposure", cfg.exposure))
              if c}
        pred = np.asarray(res.predict(X_test, **kw), dtype=np.float64)
        if len(pred) != len(test):
            raise DataError(f"{len(test) - len(pred)} of {len(test)} rows could not be "
                            "predicted (missing values in the model's columns)")
        if classes is None:
            return {"task": "regression", "y_true": y_true, "pred": pred, "proba": None,
                    "classes": None}
        return {"task": "classification", "y_true": y_true,
                "pred": (pred >= 0.5).astype(np.int64),
                "proba": np.column_stack([1 - pred, pred]),
                "classes": [c.item() if hasattr(c, "item") else c for c in classes]}


SUFFSTATS_AUTO_BYTES = 1 << 30
