"""distml benchmarks against plain-library baselines (rules: BENCHMARKS.md, usage: README.md).

``python -m benchmarks NAME [--quick] [--reps N]``. A benchmark is one module exposing
``TITLE`` and ``run(opts) -> dict`` plus one entry in :data:`REGISTRY`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module (relative to this package). B1–B6 go here as they are written.
REGISTRY: dict[str, str] = {
    "b1": "b1_tune_overhead",
    "b2": "b2_hpo_xgboost",
    "b3": "b3_xgboost_dist",
    "b4": "b4_torch_ddp",
    "b5": "b5_out_of_core",
    "b5_dask": "b5_dask",
    "b6": "b6_many_models",
    "b7": "b7_quickstart",
}


def load(name: str) -> ModuleType:
    key = name.lower()
    if key not in REGISTRY:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return importlib.import_module(f"{__name__}.{REGISTRY[key]}")
