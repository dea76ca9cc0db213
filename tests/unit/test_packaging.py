"""pyproject.toml declares every third-party package distml imports (issue 17 "Also"), and the
installed versions satisfy the declared bounds."""

from __future__ import annotations

import ast
import os
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: import name -> distribution name, where they differ
DIST = {
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "pydantic_core": "pydantic",
    "mlflow": "mlflow-skinny",
    "dask_ml": "dask-ml",
}


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)


def _imports() -> set[str]:
    names: set[str] = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "distml")):
        for f in files:
            if not f.endswith(".py"):
                continue
            tree = ast.parse(open(os.path.join(folder, f), encoding="utf-8").read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "distml"}


def test_every_import_is_declared():
    project = _pyproject()["project"]
    declared = {Requirement(r).name.lower() for r in project["dependencies"]}
    extras = {
        Requirement(r).name.lower()
        for reqs in project["optional-dependencies"].values()
        for r in reqs
    }
    missing = []
    for name in sorted(_imports()):
        dist = DIST.get(name, name).lower()
        # an extra's package is imported lazily (tests/unit/test_kind_contract.py checks that
        # importing every kind module imports no heavy library)
        if dist in declared or dist in extras:
            continue
        missing.append(f"{name} ({dist})")
    assert missing == [], f"imported by distml but not declared in pyproject.toml: {missing}"


@pytest.mark.parametrize("name", ["statsmodels", "skops", "scikit-learn"])
def test_private_api_users_have_an_upper_bound_that_holds(name):
    (req,) = [
        Requirement(r)
        for r in _pyproject()["project"]["dependencies"]
        if Requirement(r).name == name
    ]
    assert any(s.operator == "<" for s in req.specifier), f"{name} needs an upper bound"
    try:
        assert req.specifier.contains(version(name)), f"installed {name} outside {req}"
    except PackageNotFoundError:
        pytest.fail(f"{name} is a dependency of distml and is not installed")
