"""Registry of job kinds: ``kind`` → the module that implements it (a leaf: imports no layer).

A job kind is one module (or package) under ``distml/jobs/`` exposing ``Spec`` (a
:class:`distml.spec.JobSpec` subclass whose ``kind`` is a Literal) and ``Job`` (a
:class:`distml.jobs.base.Job` subclass that declares what the kind can do: tune hooks, a predictor,
report sections). Modules are imported on first use and must keep heavy imports (ray, xgboost,
torch, …) inside functions, so that ``distml validate`` stays instant. Adding a kind = one module +
one line here (see ``docs/architecture.md``).

Everything above the kinds (``spec`` loading, ``tune``, ``predict``, ``report`` through ``api``)
reaches a kind only through :func:`kind_module` / :func:`job_class`, never by importing it; the
import-linter contracts in ``pyproject.toml`` enforce that.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

KINDS: dict[str, str] = {
    "sklearn": "distml.jobs.sklearn",
    "xgboost": "distml.jobs.xgboost",
    "pca": "distml.jobs.pca",
    "kmeans": "distml.jobs.kmeans",
    "statsmodels": "distml.jobs.statsmodels",
    "torch": "distml.jobs.torch",
    "lightgbm": "distml.jobs.lightgbm",
    "ladder": "distml.jobs.ladder",
}


def kind_module(kind: str) -> ModuleType:
    """Import and return the module of ``kind``; an unknown kind lists the valid ones."""
    from distml.errors import SpecError

    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(str(kind), KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        got = repr(kind) if len(repr(kind)) <= 80 else repr(kind)[:77] + "..."
        raise SpecError(f"kind must be one of {', '.join(sorted(KINDS))}; got {got}{hint}")
    return importlib.import_module(KINDS[kind])


def job_class(kind: str) -> Any:
    """The ``Job`` class of ``kind`` (its abilities are class attributes and classmethods)."""
    return kind_module(kind).Job


def spec_classes() -> list[type]:
    """Every registered kind's ``Spec`` class, in registry order."""
    return [kind_module(k).Spec for k in KINDS]
