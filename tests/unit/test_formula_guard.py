"""Formulas are data, not code (issue 17 item 3): every formula that can be evaluated — in the
spec, from ``--set``, or any choice of a ``tune`` search space — passes the same guard, column
check included, before anything runs; and the namespace patsy evaluates terms in reaches no
Python builtin, so a formula that slipped past the guard fails cleanly instead of executing."""

from __future__ import annotations

import builtins

import numpy as np
import pandas as pd
import pytest
import yaml

from distml.api import validate
from distml.cli import main
from distml.errors import DataError, SpecError
from distml.jobs.statsmodels import analyze_formula, formula_namespace

BASE = {
    "name": "t",
    "kind": "statsmodels",
    "data": {"source": "builtin:longley", "split": {"valid": 0.3}},
    "model": {"formula": "TOTEMP ~ GNP"},
}

#: formula -> a piece of the sentence that refuses it
UNSAFE = {
    "TOTEMP ~ C(GNP, exit)": "column 'exit' is not in",
    "TOTEMP ~ C(GNP, __import__)": "may not use '__import__'",
    "TOTEMP ~ C(GNP, print)": "column 'print' is not in",
    "TOTEMP ~ GNP + I(breakpoint)": "column 'breakpoint' is not in",
    'TOTEMP ~ Q("__builtins__")': "may not use '__builtins__'",
    "TOTEMP ~ np.log(GNP, out=GNP)": "np.log() may not take out=",
    "TOTEMP ~ np.add(GNP, 1, out=GNP)": "calls something that is not an allowed function",
    "TOTEMP ~ np.log(GNP, GNP)": "np.log() takes at most 1 argument(s)",
    "TOTEMP ~ np.square(GNP, dtype=object)": "np.square() may not take dtype=",
    "TOTEMP ~ I(9**9**9**9)": "the exponent of '9 ** 9 ** 9 ** 9' must be a number",
    "TOTEMP ~ I(GNP ** GNP)": "the exponent of 'GNP ** GNP' must be a number",
    "TOTEMP ~ np.power(GNP, 9**9)": "the exponent of 'np.power(GNP, 9 ** 9)' must be a number",
    "TOTEMP ~ I((GNP ** 2) ** 3)": "is a power of a power",
    "TOTEMP ~ I(GNP * 9**99 * 9**99)": "'9 ** 99' computes with numbers alone",
    "TOTEMP ~ I(GNP + (1 << 99))": "'1 << 99' computes with numbers alone",
    "TOTEMP ~ C(GNP, levels=['a'] * 999999999)": "computes with text or a list",
    "TOTEMP ~ I(99999999999999999999 + GNP)": "does not fit in 64 bits",
}


def _refused(formula: str) -> str:
    """The exit-2 error validating ``formula`` (with the data) raises."""
    with pytest.raises((SpecError, DataError)) as e:
        validate({**BASE, "model": {"formula": formula}})
    assert e.value.exit_code == 2
    return e.value.message


@pytest.mark.parametrize("formula", sorted(UNSAFE))
def test_unsafe_spec_formula_is_refused_at_validation(formula):
    message = _refused(formula)
    assert message.startswith("model.formula") and UNSAFE[formula] in message


@pytest.mark.parametrize("formula", sorted(UNSAFE))
def test_unsafe_formula_among_tune_choices_is_refused_before_any_run(formula):
    """A choice of a search space is checked like the spec's own formula, column check
    included."""
    _tune_refuses(["TOTEMP ~ GNP", formula], formula)


def test_every_choice_is_checked_not_only_the_first_thousand():
    benign = [f"TOTEMP ~ GNP + I(GNP * {i})" for i in range(1, 1001)]
    _tune_refuses(benign + ["TOTEMP ~ C(GNP, exit)"], "TOTEMP ~ C(GNP, exit)")


def _tune_refuses(choices: list[str], formula: str) -> None:
    raw = {
        **BASE,
        "tune": {
            "metric": "valid.rmse",
            "num_samples": 1,
            "space": {"model.formula": {"choice": choices}},
        },
    }
    with pytest.raises((SpecError, DataError)) as e:
        validate(raw)
    assert e.value.exit_code == 2
    assert e.value.message.startswith("tune.space.model.formula: the value ")
    assert repr(formula) in e.value.message and UNSAFE[formula] in e.value.message


def test_cli_validate_refuses_spec_set_and_grid_formulas_with_exit_2(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    assert main(["validate", str(path), "--set", "model.formula=TOTEMP ~ C(GNP, exit)"]) == 2
    assert "model.formula: column 'exit' is not in" in capsys.readouterr().err
    grid = {
        **BASE,
        "tune": {
            "metric": "valid.rmse",
            "search": "grid",
            "space": {"model.formula": {"grid": ["TOTEMP ~ GNP", "TOTEMP ~ C(GNP, exit)"]}},
        },
    }
    path.write_text(yaml.safe_dump(grid))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tune.space.model.formula: the value 'TOTEMP ~ C(GNP, exit)'" in err
    assert "Traceback" not in err


def test_safe_formulas_still_pass():
    for formula in [
        "TOTEMP ~ GNP + I(GNP ** 2) + I(GNP ** -0.5) + np.power(GNP, 3)",
        "np.log(TOTEMP) ~ C(YEAR > 1955) + center(GNP) + I(2 * GNP - 1)",
        "TOTEMP ~ np.clip(GNP, 300, a_max=500) + np.where(GNP > 400, GNP, 0)",
    ]:
        validate({**BASE, "model": {"formula": formula}})
    choices = ["TOTEMP ~ GNP", "TOTEMP ~ GNP + UNEMP", "TOTEMP ~ C(YEAR)"]
    validate(
        {**BASE, "tune": {"metric": "valid.rmse", "space": {"model.formula": {"choice": choices}}}}
    )
    assert analyze_formula("y ~ I(x ** 2)").columns == ["y", "x"]


# ------------------------------------------------------------------ the evaluation namespace


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {"y": rng.normal(size=30), "x": rng.normal(size=30) + 3, "g": ["a", "b", "c"] * 10}
    )


@pytest.mark.parametrize(
    "formula,name",
    [
        ("y ~ C(g, exit)", "exit"),
        ("y ~ C(g, print)", "print"),
        ("y ~ I(x * len(x))", "len"),
        ("y ~ I(__import__('os'))", "__import__"),
        ('y ~ Q("__builtins__")', "__builtins__"),
        ("y ~ ContrastMatrix(x, 1)", "ContrastMatrix"),
    ],
)
def test_a_builtin_in_an_evaluated_formula_fails_cleanly(formula, name, capsys):
    """The guard is bypassed on purpose: statsmodels evaluates the formula in distml's
    namespace, and the builtin it names is not reachable — nothing runs (no SystemExit, nothing
    printed), a NameError names it."""
    import statsmodels.formula.api as smf

    with pytest.raises(Exception) as e:
        smf.ols(formula, _frame(), eval_env=formula_namespace()).fit()
    assert not isinstance(e.value, SystemExit) and capsys.readouterr().out == ""
    assert "NameError" in f"{type(e.value).__name__}: {e.value}"
    assert repr(name) in str(e.value)
    # Without distml's namespace the same formula does reach the builtin (what the test guards).
    if name == "len":
        assert smf.ols(formula, _frame(), eval_env={"np": np}).fit() is not None


def test_the_namespace_holds_only_numpy_and_the_allowed_functions():
    from distml.jobs.statsmodels import NUMPY_FUNCS

    env = formula_namespace()
    assert set(vars(env["np"])) == NUMPY_FUNCS and env["np"] is env["numpy"]
    usable = {k for k, v in env.items() if type(v).__name__ != "_Unavailable"}
    assert usable == {"np", "numpy", "Q"}
    assert set(vars(builtins)) <= set(env) and "__builtins__" in env
    with pytest.raises(NameError, match="'open' is not available in a formula"):
        env["open"]("/etc/passwd")


def test_allowed_functions_evaluate_as_before():
    """np, patsy's C/I/Q/center and the columns resolve in the restricted namespace, with the
    numbers statsmodels gives with its own default namespace."""
    import statsmodels.formula.api as smf

    df = _frame().rename(columns={"x": "x one"})
    formula = 'y ~ np.log(Q("x one")) + I(Q("x one") ** 2) + C(g) + center(Q("x one"))'
    ours = smf.ols(formula, df, eval_env=formula_namespace()).fit()
    theirs = smf.ols(formula, df, eval_env={"np": np}).fit()
    pd.testing.assert_series_equal(ours.params, theirs.params)


def test_another_formula_engine_is_refused(monkeypatch):
    """The guard checks patsy's grammar, so formulas are never handed to formulaic: neither
    when statsmodels was told so in this process nor through the environment of a new one."""
    import sys

    import statsmodels.formula

    monkeypatch.setattr(statsmodels.formula.options, "formula_engine", "formulaic")
    with pytest.raises(SpecError, match="formula_engine=formulaic is not supported"):
        validate(BASE)
    with pytest.raises(SpecError, match="formulaic is not supported"):
        formula_namespace()
    monkeypatch.undo()
    monkeypatch.setenv("SM_FORMULA_ENGINE", "formulaic")
    monkeypatch.setitem(sys.modules, "statsmodels.formula", None)  # as before the first import
    with pytest.raises(SpecError, match="SM_FORMULA_ENGINE=formulaic is not supported"):
        validate(BASE)
