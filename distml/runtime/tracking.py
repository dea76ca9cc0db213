"""Optional MLflow tracking of finished runs (spec: ``tracking: {mlflow: {uri, experiment}}``).

:func:`log_result` records one distml run as one MLflow run: the resolved spec as params
(dotted paths: ``model.params.max_depth``), the numeric metrics as metrics (``valid.roc_auc``,
``cv.mean.accuracy``), tags naming the distml run (``distml.name``, ``distml.run_id``,
``distml.kind``, ``distml.run_dir``), and the run directory as artifacts. Logging the same
distml run again (a rerun of a finished ``--run-id``) finds the MLflow run by its tags and logs
nothing twice. MLflow is optional: a spec with ``tracking.mlflow`` where it is not installed
fails at validation (:func:`check_available`, exit 2 with an install hint), before the run.

>>> log_result(distml.run("jobs/quickstart.yaml"),                       # doctest: +SKIP
...            {"uri": "file:///tmp/mlruns", "experiment": "churn"})
"""

from __future__ import annotations

import json
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from distml.errors import MissingDependency, SpecError

log = logging.getLogger("distml")

_MAX_PARAMS_PER_CALL = 100
_MAX_PARAM_VALUE = 6000
_ARTIFACT_PATH = "distml_run"


_MISSING = (
    "tracking.mlflow needs the 'mlflow' package (or 'mlflow-skinny'), which is not "
    'installed; install it with: pip install "distml[tracking]" (or pip install '
    "mlflow-skinny), or remove tracking.mlflow from the spec"
)


def _mlflow():
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MissingDependency(_MISSING) from None
    return mlflow, MlflowClient


def check_available(job_spec: Any) -> None:
    """Fail a spec with ``tracking.mlflow`` when MLflow is not installed here (exit 2 with the
    install hint), at validation: never after the run wrote ``_SUCCESS``. Looks the package up
    without importing it (MLflow's import takes seconds)."""
    tracking = getattr(job_spec, "tracking", None)
    if tracking is None or getattr(tracking, "mlflow", None) is None:
        return
    import importlib.util

    try:
        found = importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        found = False
    if not found:
        raise MissingDependency(_MISSING)


@contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """MLflow 3 refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set; a ``file:``
    URI in a spec is that ask, for the logging calls only: the previous value (or its absence)
    is restored after, so the rest of the process sees what the user set."""
    if not _is_local_store(uri):
        yield
        return
    previous = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true" if previous is None else previous
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = previous


def _config(config: Any) -> dict[str, Any]:
    """Accept ``{uri, experiment, ...}``, ``{"mlflow": {...}}`` or a pydantic model of either."""
    if hasattr(config, "model_dump"):
        config = config.model_dump()
    if not isinstance(config, Mapping):
        raise SpecError(f"tracking must be a mapping with uri and experiment; got {config!r}")
    if "mlflow" in config:
        config = config["mlflow"] or {}
    cfg = dict(config)
    if not cfg.get("uri"):
        raise SpecError(
            "tracking.mlflow.uri is required (e.g. http://mlflow:5000 or file:///shared/mlruns)"
        )
    cfg.setdefault("experiment", "distml")
    return cfg


def flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Leaves of nested dicts as (dotted path, value); lists stay leaves.

    >>> dict(flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}))
    {'a.b': 1, 'a.c': [1, 2], 'd': 'x'}
    """
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, tree


def metric_items(metrics: Mapping) -> dict[str, float]:
    """Numeric leaves of ``metrics.json`` (booleans, lists, NaN and text are left out)."""
    out = {}
    for key, value in flatten(metrics):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


def param_items(spec: Mapping) -> dict[str, str]:
    """The resolved spec as MLflow params: dotted paths, JSON values, truncated to MLflow's
    length limit."""
    out = {}
    for key, value in flatten(spec):
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[key] = text[:_MAX_PARAM_VALUE]
    return out


def _is_local_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri


def log_result(result: Any, config: Any) -> str:
    """Log a finished :class:`distml.Result` to MLflow; returns the MLflow run id.

    ``config``: ``{"uri": ..., "experiment": ..., "run_name": ..., "tags": {...},
    "log_artifacts": True}`` (or the same under ``"mlflow"``).
    """
    cfg = _config(config)
    _, MlflowClient = _mlflow()
    uri = str(cfg["uri"])
    with _file_store_allowed(uri):
        return _log_result(result, cfg, uri, MlflowClient)


def _log_result(result: Any, cfg: dict[str, Any], uri: str, MlflowClient: Any) -> str:  # noqa: N803
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg["experiment"])
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(cfg["experiment"])
    )
    run_dir = Path(result.run_dir)
    tags = {
        "distml.name": result.name,
        "distml.kind": result.kind,
        "distml.run_id": result.run_id,
        "distml.run_dir": str(run_dir),
        "distml.status": result.status,
        **{str(k): str(v) for k, v in (cfg.get("tags") or {}).items()},
    }
    found = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`distml.run_id` = '{_quote(result.run_id)}' and "
            f"tags.`distml.name` = '{_quote(result.name)}'"
        ),
        max_results=1,
    )
    if found:
        log.info(
            "distml run %s/%s is already MLflow run %s",
            result.name,
            result.run_id,
            found[0].info.run_id,
        )
        return found[0].info.run_id
    run = client.create_run(
        experiment_id, run_name=cfg.get("run_name") or f"{result.name}/{result.run_id}", tags=tags
    )
    rid = run.info.run_id
    try:
        _log_contents(client, rid, result, run_dir, bool(cfg.get("log_artifacts", True)))
    except Exception:
        client.set_terminated(rid, "FAILED")
        raise
    client.set_terminated(rid, "FINISHED" if result.status == "succeeded" else "FAILED")
    log.info(
        "logged run %s/%s to MLflow (%s, experiment %r, run %s)",
        result.name,
        result.run_id,
        uri,
        cfg["experiment"],
        rid,
    )
    return rid


def _log_contents(client, rid: str, result, run_dir: Path, artifacts: bool) -> None:
    from mlflow.entities import Metric, Param

    spec_path = run_dir / "spec.yaml"
    if spec_path.is_file():
        from distml.spec.yamlio import load_yaml  # refuses aliases (a planted bomb)

        params = [
            Param(k, v) for k, v in param_items(load_yaml(spec_path.read_text()) or {}).items()
        ]
        for i in range(0, len(params), _MAX_PARAMS_PER_CALL):
            client.log_batch(rid, params=params[i : i + _MAX_PARAMS_PER_CALL])
    import time

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in metric_items(result.metrics).items()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(rid, metrics=metrics[i : i + 1000])
    if artifacts:
        for child in sorted(run_dir.iterdir()):
            if child.name == "checkpoints" or child.name.startswith("."):
                continue
            if child.is_dir():
                client.log_artifacts(rid, str(child), f"{_ARTIFACT_PATH}/{child.name}")
            else:
                client.log_artifact(rid, str(child), _ARTIFACT_PATH)


def log_result_safely(result: Any, config: Any) -> str | None:
    """:func:`log_result` for the end of a successful run: a tracking failure is a warning,
    not a failed run (the run directory is complete and ``_SUCCESS`` is written)."""
    try:
        return log_result(result, config)
    except MissingDependency:
        raise
    except Exception as e:  # tracking server down, permissions...
        log.warning("could not log run %s/%s to MLflow: %s", result.name, result.run_id, e)
        return None


def _quote(value: str) -> str:
    return str(value).replace("'", "\\'")


__all__ = [
    "log_result",
    "log_result_safely",
    "check_available",
    "metric_items",
    "param_items",
    "flatten",
]
