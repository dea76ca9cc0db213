"""distml: declarative modeling jobs — statistical inference and distributed ML — on Ray.

>>> import distml
>>> result = distml.run("jobs/quickstart.yaml")     # doctest: +SKIP
>>> result.metrics["valid"]["roc_auc"]              # doctest: +SKIP

The public names below are imported on first use (PEP 562), so ``import distml.errors`` or
``distml --help`` does not pay for pydantic, the spec models or the API: the CLI's instant
commands stay instant (issue 14).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "run": "distml.api",
    "validate": "distml.api",
    "build_report": "distml.api",
    "submit": "distml.remote",
    "Submission": "distml.remote",
    "predict": "distml.scoring",
    "Prediction": "distml.scoring",
    "list_runs": "distml.report",
    "load_spec": "distml.spec",
    "json_schema": "distml.spec",
    "JobSpec": "distml.spec",
    "Result": "distml.result",
    "DistmlError": "distml.errors",
    "SpecError": "distml.errors",
    "DataError": "distml.errors",
    "ClusterError": "distml.errors",
    "JobFailed": "distml.errors",
}

_SUBMODULES = frozenset(
    {"api", "cli", "errors", "jobs", "progress", "registry", "remote", "report", "result"}
    | {"runtime", "scoring", "spec", "tune"}
)

__all__ = [
    "run",
    "validate",
    "submit",
    "predict",
    "build_report",
    "list_runs",
    "load_spec",
    "json_schema",
    "JobSpec",
    "Result",
    "Submission",
    "Prediction",
    "DistmlError",
    "SpecError",
    "DataError",
    "ClusterError",
    "JobFailed",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if name in _SUBMODULES:  # ``import distml; distml.api.run(...)`` as before
            return importlib.import_module(f"distml.{name}")
        raise AttributeError(f"module 'distml' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from distml.api import build_report, run, validate
    from distml.errors import ClusterError, DataError, DistmlError, JobFailed, SpecError
    from distml.remote import Submission, submit
    from distml.report import list_runs
    from distml.result import Result
    from distml.scoring import Prediction, predict
    from distml.spec import JobSpec, json_schema, load_spec
