"""Formulas of the statsmodels kind, made safe: parsed without being evaluated, and evaluated
only in a namespace where no Python builtin is reachable (docs in :mod:`distml.jobs.statsmodels`).

Used by the kind's spec checks (:mod:`distml.jobs.statsmodels`) and by the fit engine
(:mod:`distml.jobs.statsmodels.fit`), which therefore do not import each other.
"""

from __future__ import annotations

import ast
import builtins
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from distml.errors import SpecError

#: Functions a formula may call. patsy provides C, I, Q, the contrasts and the stateful
#: transforms; ``np.<name>`` may use the numpy functions listed here.
PATSY_FUNCS = {
    "C",
    "I",
    "Q",
    "Treatment",
    "Sum",
    "Diff",
    "Helmert",
    "Poly",
    "center",
    "standardize",
    "scale",
    "bs",
    "cr",
    "cc",
    "te",
}
STATEFUL_FUNCS = {"center", "standardize", "scale", "bs", "cr", "cc", "te"}
NUMPY_FUNCS = {
    "log",
    "log1p",
    "log2",
    "log10",
    "exp",
    "expm1",
    "sqrt",
    "square",
    "abs",
    "absolute",
    "sin",
    "cos",
    "tan",
    "arcsin",
    "arccos",
    "arctan",
    "sinh",
    "cosh",
    "tanh",
    "power",
    "floor",
    "ceil",
    "sign",
    "maximum",
    "minimum",
    "clip",
    "where",
}
#: np.<f> keywords a formula may pass (``np.clip``'s bounds); ``out=``, ``dtype=``... are refused:
#: ``out=`` writes into a data column, ``dtype=object`` turns numbers into unbounded Python ints.
NUMPY_KEYWORDS = {"a_min", "a_max", "min", "max"}
#: positional arguments each np.<f> takes at most (one more would be the ufunc's ``out``).
NUMPY_ARITY = {
    **{f: 1 for f in NUMPY_FUNCS},
    "power": 2,
    "maximum": 2,
    "minimum": 2,
    "clip": 3,
    "where": 3,
}
#: largest |exponent| of ``**`` / ``np.power``: a literal, so ``9**9**9**9`` cannot run for ever.
MAX_EXPONENT = 100
_INT64 = 2**63
_OPS = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.BoolOp,
    ast.Constant,
    ast.keyword,
    ast.Load,
    ast.operator,
    ast.unaryop,
    ast.cmpop,
    ast.boolop,
    ast.IfExp,
    ast.List,
    ast.Tuple,
)


def counts_formula(m) -> str | None:
    """The formula statsmodels fits for ``model.trials``: the proportion turned into successes
    + failures (``I(p * n) + I(n - p * n) ~ ...``), which equals R's ``glm(p ~ ..., weights =
    n)`` estimates and gives the binomial likelihood of the counts."""
    if not m.trials or m.formula is None:
        return m.formula
    lhs, rhs = (part.strip() for part in m.formula.split("~", 1))
    n = m.trials
    return f"I({lhs} * {n}) + I({n} - {lhs} * {n}) ~ {rhs}"


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
        raise ValueError(
            "model.formula must have exactly one response on the left of '~' "
            "(e.g. 'y ~ x'), or successes + failures for a binomial glm (e.g. "
            f"'NSUCC + NFAIL ~ x'); got {formula!r}"
        )
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
        raise ValueError(
            f"model.formula term {code!r} is not a valid expression; got {formula!r}"
        ) from None
    cols: list[str] = []
    rowwise = True
    funcs: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _call_name(node.func)
            if name is None:
                raise ValueError(
                    f"model.formula term {code!r} calls something that is not an "
                    f"allowed function; allowed: {', '.join(sorted(PATSY_FUNCS))} "
                    "and numpy functions such as np.log, np.exp, np.sqrt (the list "
                    "is in docs/statsmodels.md)"
                )
            funcs.add(id(node.func))
            if isinstance(node.func, ast.Attribute):
                funcs.add(id(node.func.value))
                _check_numpy_call(node, name, code)
            if name in STATEFUL_FUNCS or name in ("Treatment", "Sum", "Diff", "Helmert", "Poly"):
                rowwise = False
            if name == "C" and (len(node.args) != 1 or node.keywords):
                rowwise = False  # explicit contrasts/levels: fit each group from its formula
            if name == "Q":
                if (
                    len(node.args) != 1
                    or not isinstance(node.args[0], ast.Constant)
                    or not isinstance(node.args[0].value, str)
                ):
                    raise ValueError(
                        f"model.formula term {code!r}: Q() takes one quoted column name"
                    )
                if node.args[0].value.startswith("__"):
                    raise ValueError(
                        f"model.formula term {code!r} may not use {node.args[0].value!r}"
                    )
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
                raise ValueError(
                    f"model.formula term {code!r} may not access attributes "
                    f"(.{node.attr}); only np.<function>(...) calls are allowed"
                )
        elif isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Pow):
                _check_power(node.left, node.right, node, code)
            for side in (node.left, node.right):
                if isinstance(side, (ast.List, ast.Tuple)) or (
                    isinstance(side, ast.Constant) and isinstance(side.value, (str, bytes))
                ):
                    raise ValueError(
                        f"model.formula term {code!r}: {_piece(node)!r} computes "
                        "with text or a list; arithmetic takes columns and numbers"
                    )
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, int) and abs(node.value) >= _INT64:
                raise ValueError(
                    f"model.formula term {code!r}: the number {_piece(node)!r} "
                    "does not fit in 64 bits"
                )
        elif not isinstance(node, _OPS + (ast.Call,)):
            raise ValueError(
                f"model.formula term {code!r} uses {type(node).__name__}, which "
                "a formula may not contain; use columns, numbers, operators and "
                "the allowed functions"
            )
    _check_arithmetic(tree, funcs, code)
    cat = None
    body = tree.body
    if (
        isinstance(body, ast.Call)
        and _call_name(body.func) == "C"
        and len(body.args) == 1
        and not body.keywords
        and len(cols) == 1
        and (
            isinstance(body.args[0], ast.Name)
            or _call_name(getattr(body.args[0], "func", None)) == "Q"
        )
    ):
        cat = cols[0]
    return cols, rowwise, cat


def _piece(node: ast.AST, limit: int = 80) -> str:
    """The source of ``node`` for a message, shortened."""
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_power(node: ast.AST) -> bool:
    return (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow)) or (
        isinstance(node, ast.Call) and _call_name(node.func) == "np.power"
    )


def _check_power(base: ast.AST, exponent: ast.AST | None, node: ast.AST, code: str) -> None:
    """A power's exponent is a number literal of magnitude <= MAX_EXPONENT and its base holds
    no other power: ``9**9**9**9`` would otherwise compute for ever on the workers."""
    e = exponent
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, (ast.USub, ast.UAdd)):
        e = e.operand
    if not (
        isinstance(e, ast.Constant)
        and isinstance(e.value, (int, float))
        and not isinstance(e.value, bool)
        and abs(e.value) <= MAX_EXPONENT
    ):
        raise ValueError(
            f"model.formula term {code!r}: the exponent of {_piece(node)!r} must "
            f"be a number between -{MAX_EXPONENT} and {MAX_EXPONENT} (a computed "
            "exponent, such as a tower 9**9**9, can run for ever)"
        )
    if any(_is_power(n) for n in ast.walk(base)):
        raise ValueError(
            f"model.formula term {code!r}: {_piece(node)!r} is a power of a power, "
            "which a formula may not contain; write a single power"
        )


def _check_numpy_call(node: ast.Call, name: str, code: str) -> None:
    """np.<f> takes its inputs positionally: no ``out=`` (it writes into a data column), no
    ``dtype=`` (object dtype computes with unbounded Python ints), no extra positional out."""
    f = name.split(".", 1)[1]
    for kw in node.keywords:
        if kw.arg not in NUMPY_KEYWORDS:
            shown = "**" if kw.arg is None else f"{kw.arg}="
            raise ValueError(
                f"model.formula term {code!r}: {name}() may not take {shown} "
                f"({_piece(node)!r}); pass the inputs positionally"
            )
    if len(node.args) > NUMPY_ARITY[f]:
        raise ValueError(
            f"model.formula term {code!r}: {name}() takes at most "
            f"{NUMPY_ARITY[f]} argument(s) ({_piece(node)!r}); a further one would "
            "be its out= array"
        )
    if f == "power":
        _check_power(
            node.args[0] if node.args else node,
            node.args[1] if len(node.args) > 1 else None,
            node,
            code,
        )


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
            raise ValueError(
                f"model.formula term {code!r}: {_piece(node)!r} computes with "
                "numbers alone; write the number itself (arithmetic needs a column)"
            )


def check_engine() -> None:
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
        raise SpecError(
            f"model.formula is evaluated with patsy, whose grammar distml checks; "
            f"{setting}={engine} is not supported; use patsy"
        )


def _call_name(func: Any) -> str | None:
    if isinstance(func, ast.Name) and func.id in PATSY_FUNCS:
        return func.id
    if (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id in ("np", "numpy")
        and func.attr in NUMPY_FUNCS
    ):
        return f"np.{func.attr}"
    return None


class _Unavailable:
    """What a formula finds under a Python builtin's name: using it is a clean NameError."""

    __slots__ = ("_name",)

    def __init__(self, name: str):
        self._name = name

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise NameError(
            f"{self._name!r} is not available in a formula (only columns, numbers "
            "and the allowed functions are)"
        )

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
    check_engine()
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
