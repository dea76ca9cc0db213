"""The Python API: ``distml.run``. The CLI is a thin layer over this module."""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
import traceback
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any, Iterable, Iterator, Mapping

from distml import progress
from distml.errors import DistmlError, JobFailed, SpecError
from distml.result import Result
from distml.runtime import interrupts, warm_workers
from distml.spec import JobSpec, load_spec

log = logging.getLogger("distml")
# Tracebacks go to run.log only (the console gets one sentence; --debug shows the traceback).
_trace = logging.getLogger("distml.trace")
_trace.propagate = False
_trace.addHandler(logging.NullHandler())  # outside run.log's span: nowhere (not Python's stderr)


def _versions(job: Any = None) -> dict[str, str]:
    """Versions of the platform packages and of the libraries the run's kind declares."""
    from importlib import metadata  # ~0.05 s: not paid by `distml validate`

    out = {"python": platform.python_version()}
    for pkg in (
        "distml",
        "ray",
        "xgboost",
        "scikit-learn",
        "pandas",
        "pyarrow",
        "numpy",
        "statsmodels",
        "torch",
        "dask",
        "pydantic",
        *getattr(job, "libraries", ()),
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


@contextmanager
def _run_log(run_dir) -> Iterator[None]:
    """Log to ``run.log`` in the run directory (via a temp name, renamed when the run ends)."""
    from distml.runtime.artifacts import TMP_MARK

    tmp = run_dir.path / f".run.log{TMP_MARK}{os.getpid()}"
    handler = logging.FileHandler(tmp, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    old_level = log.level
    try:  # a signal between these steps still removes the handler
        log.addHandler(handler)
        _trace.addHandler(handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
        yield
    finally:
        log.removeHandler(handler)
        _trace.removeHandler(handler)
        log.setLevel(old_level)
        handler.close()
        os.replace(tmp, run_dir.path / "run.log")


def run(
    spec: "str | os.PathLike | Mapping | JobSpec",
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    *,
    output: str | os.PathLike | None = None,
    address: str | None = None,
    run_id: str | None = None,
    resume: bool = False,
    data: Any = None,
    test_data: Any = None,
    **kw_overrides: Any,
) -> Result:
    """Run a job described by ``spec`` (a YAML path, a dict or a JobSpec) and return its Result.

    Overrides are dotted paths, as a mapping, ``--set``-style strings, or keyword arguments with
    ``__`` for dots::

        r = distml.run("jobs/quickstart.yaml", model__params__max_depth=3)
        r.metrics["valid"]["roc_auc"]

    A rerun with the ``run_id`` of a finished run returns the stored result without running
    (after checking its artifacts' digests; a different spec is a SpecError naming the fields).
    While a run works it holds its run directory's lock: the same ``run_id`` started elsewhere
    meanwhile raises :class:`distml.ClusterError` (exit 3) naming the holder.

    ``data`` (``test_data``): a pandas DataFrame, a Dask DataFrame, a ``ray.data.Dataset`` or a
    Spark DataFrame used instead of the spec's ``data.source`` (``data.test_source``), which it
    replaces (the spec then needs none). It is staged as parquet in the run directory by the
    cluster's (or Spark's) workers and removed when the run ends; see docs/data.md::

        r = distml.run("jobs/quickstart.yaml", data=dd.read_parquet("/data/train/"))

    Raises :class:`distml.SpecError`/:class:`distml.DataError` (invalid input, before any cluster
    work), :class:`distml.ClusterError` (unreachable cluster) or :class:`distml.JobFailed`.
    """
    with interrupts.sigterm_interrupts():  # first: a SIGTERM at any moment of a run
        return _run(spec, overrides, output, address, run_id, resume, kw_overrides, data, test_data)


def _run(
    spec, overrides, output, address, run_id, resume, kw_overrides, data=None, test_data=None
) -> Result:
    from distml.registry import kind_module
    from distml.runtime import frames as fr
    from distml.runtime.artifacts import RunDir, run_fingerprint

    frames = fr.describe_all(data=data, test_data=test_data)  # bad types: DataError now
    merged = _merged(overrides, kw_overrides)
    job_spec = load_spec(spec, {**merged, **fr.spec_fields(frames, merged, None)})
    if output is not None:
        from distml.spec.base import check_output_dir

        try:
            check_output_dir(output, "--output")
        except ValueError as e:
            raise SpecError(str(e)) from None
    from distml.runtime.tracking import check_available

    check_available(job_spec)  # a missing MLflow is exit 2 now, not a warning after _SUCCESS
    run_dir = RunDir(output or job_spec.output.dir, job_spec.name, run_id)
    if frames:  # the frames' staging folders stand for their sources
        job_spec = load_spec(job_spec, fr.spec_fields(frames, merged, run_dir.path))
        fr.check_spec_columns(frames, job_spec)  # names only, before any cluster work
    if run_dir.complete:
        return _reuse(run_dir, job_spec, frames)

    t_start = time.time()
    timings: dict[str, float] = {}
    if not frames:
        job, info = _check(kind_module(job_spec.kind).Job(job_spec), job_spec, timings)

    staging = ExitStack()  # frames: staged copies (and the cluster that staged them) end here
    with run_dir.lock(), staging:  # RunBusy (exit 3) while another process runs this run id
        if run_dir.complete:  # finished by another process since the check above
            return _reuse(run_dir, job_spec, frames)
        run_dir.prepare(resume=resume)
        cl = None
        if frames:
            cl, job, info = _stage(frames, job_spec, run_dir, address, timings, t_start, staging)
        fingerprint = run_fingerprint(job_spec, info)
        checkpoints = run_dir.path / "checkpoints"
        if resume and checkpoints.is_dir() and any(checkpoints.iterdir()):
            run_dir.check_resume(fingerprint)  # before the cluster: what is resumed is this run
        else:  # a new run, or nothing to resume: this run starts afresh
            run_dir.write_fingerprint(fingerprint)
        manifest: dict[str, Any] = {
            "name": job_spec.name,
            "kind": job_spec.kind,
            "run_id": run_dir.run_id,
            "status": "running",
            "started_at": t_start,
            "argv": sys.argv[1:],
            "versions": _versions(job),
            "data": fr.with_frames(info.fingerprint(), frames),
            "seeds": _seeds(job_spec),
            "host": platform.node(),
            "pid": os.getpid(),
            "resume": resume,
        }
        try:  # from the first manifest on, a stop at any moment is recorded (never `running`)
            run_dir.write_yaml("spec.yaml", job_spec.to_dict())
            run_dir.write_json("manifest.json", manifest)
            with _run_log(run_dir):
                log.info(
                    "run %s/%s (%s) in %s",
                    job_spec.name,
                    run_dir.run_id,
                    job_spec.kind,
                    run_dir.path,
                )
                try:
                    out = _execute(
                        job, job_spec, info, run_dir, address, resume, manifest, timings, cl
                    )
                    t0 = time.perf_counter()
                    progress.current().stage("write")
                    for name, frame in out.tables.items():
                        run_dir.write_parquet(f"tables/{name}.parquet", frame)
                    for rel, data in out.files.items():
                        run_dir.write_bytes(rel, data)
                    for rel, text in out.texts.items():
                        run_dir.write_text(rel, text)
                    run_dir.write_json("metrics.json", out.metrics)
                    timings["write_s"] = time.perf_counter() - t0
                    timings["total_s"] = time.time() - t_start
                    manifest.update(
                        status="succeeded",
                        finished_at=time.time(),
                        timings=_round(timings),
                        **({"best_config": out.best_config} if out.best_config else {}),
                        **out.info,
                    )
                    manifest["report"] = _report(run_dir, manifest, timings, t_start)
                    run_dir.write_json("manifest.json", manifest)
                    log.info("run succeeded in %.1fs", timings["total_s"])
                except BaseException as e:
                    if _record_failure(run_dir, manifest, timings, e) is e:
                        raise
                    raise KeyboardInterrupt("terminated by signal 15 (SIGTERM)") from None
            # run.log is in place now: digests of every artifact, then _SUCCESS
            if frames:
                t0 = time.perf_counter()
                staging.close()  # the staged copies go before the digests
                timings["cluster_stop_s"] = timings.get("cluster_stop_s", 0.0) + (
                    time.perf_counter() - t0
                )
            _stopped(timings)  # (already, unless the report was skipped)
            run_dir.mark_success(manifest)
        except BaseException as e:  # outside the job's own handler: not recorded yet
            if manifest["status"] in ("failed", "interrupted"):
                raise
            if _record_failure(run_dir, manifest, timings, e) is e:
                raise
            raise KeyboardInterrupt("terminated by signal 15 (SIGTERM)") from None
        if job_spec.tune is not None:
            from distml.tune import discard_experiment

            discard_experiment(run_dir)
        result = Result.load(run_dir.path)
    tracking = job_spec.tracking.mlflow if job_spec.tracking is not None else None
    if tracking is not None:
        from distml.runtime.tracking import log_result_safely

        log_result_safely(result, tracking)  # after _SUCCESS: a tracking outage is a warning
    return result


def _merged(overrides, kw_overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides as one mapping of dotted paths (``--set`` strings parsed; keyword
    arguments with ``__`` for dots last)."""
    from distml.spec.load import overrides_dict

    merged = overrides_dict(overrides)
    merged.update({k.replace("__", "."): v for k, v in kw_overrides.items()})
    return merged


def _check(job, job_spec: JobSpec, timings: dict, announce: bool = True) -> tuple[Any, Any]:
    """The kind's data checks (and every searched value's): (job, DataInfo)."""
    t0 = time.perf_counter()
    if announce:
        progress.current().stage("validate")
    info = check_source(job_spec, job)  # before any cluster work
    timings["validate_s"] = time.perf_counter() - t0
    return job, info


def _stage(frames: dict, job_spec, run_dir, address, timings, t_start, stack: ExitStack):
    """Stage the frames in the run directory (the cluster up first when Ray's workers write
    them), then check the staged files as any source: (ClusterInfo or None, job, DataInfo).
    The staged copies are removed, and that cluster released, when ``stack`` closes; a failure
    here is recorded in the manifest."""
    from distml.registry import kind_module
    from distml.runtime import frames as fr
    from distml.runtime.cluster import cluster

    stack.callback(fr.remove_staging, run_dir.path)
    cl = None
    progress.current().stage("validate")
    try:
        if any(f.needs_ray for f in frames.values()):
            progress.current().stage("cluster")
            t0 = time.perf_counter()
            cl = stack.enter_context(cluster(address))
            interrupts.rearm()
            timings["cluster_start_s"] = time.perf_counter() - t0
        progress.current().stage("stage")
        t0 = time.perf_counter()
        fr.stage_all(frames, run_dir.path)
        timings["stage_s"] = time.perf_counter() - t0
        job, info = _check(kind_module(job_spec.kind).Job(job_spec), job_spec, timings, False)
    except BaseException as e:
        fr.relabel(e, frames, run_dir.path)  # name the frame, not the staging folder
        manifest = {"name": job_spec.name, "kind": job_spec.kind, "run_id": run_dir.run_id}
        manifest.update(started_at=t_start, data=fr.with_frames({}, frames))
        if _record_failure(run_dir, manifest, timings, e) is e:
            raise
        raise KeyboardInterrupt("terminated by signal 15 (SIGTERM)") from None
    return cl, job, info


def _reuse(run_dir, job_spec: JobSpec, frames: dict | None = None) -> Result:
    """The stored result of a finished run of this id, after checking that its artifacts are
    the ones recorded at ``_SUCCESS`` and that it ran this very spec."""
    import yaml

    from distml.errors import SpecError
    from distml.runtime.artifacts import diff_paths, to_jsonable, verify_finished

    verify_finished(run_dir.path)
    try:
        stored = yaml.safe_load((run_dir.path / "spec.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        stored = None
    current = yaml.safe_load(yaml.safe_dump(to_jsonable(job_spec.to_dict()), sort_keys=False))
    differ = diff_paths(stored, current) if isinstance(stored, dict) else ["spec.yaml"]
    if differ:
        shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
        raise SpecError(
            f"run id {run_dir.run_id!r} already finished with a different spec "
            f"({shown} differ); pick a new --run-id to run this spec"
        )
    if frames:
        from distml.runtime.frames import check_same

        check_same(run_dir.path, run_dir.run_id, frames)
    log.info("run %s is already complete; reporting the stored result", run_dir.path)
    return Result.load(run_dir.path, reused=True)


def _record_failure(run_dir, manifest: dict, timings: dict, e: BaseException) -> BaseException:
    """Record a failed or interrupted run in its manifest (never left ``running``); returns
    ``e``, or a KeyboardInterrupt for Ray's SIGTERM exit (the interruption it is)."""
    import signal

    _stopped(timings)  # a stop the job began finishes first (its timing, its processes)
    if isinstance(e, SystemExit) and e.code in (signal.SIGTERM, 128 + signal.SIGTERM):
        e = KeyboardInterrupt("terminated by signal 15 (SIGTERM)")  # Ray's handler won a race
    stopped = isinstance(e, KeyboardInterrupt)
    if stopped:  # Tune re-raises a bare KeyboardInterrupt: say what stopped the run
        message = str(e) or (
            "terminated by signal 15 (SIGTERM)" if interrupts.received() else "interrupted (SIGINT)"
        )
        error = {"type": "KeyboardInterrupt", "message": message}
        _trace.error("run interrupted: %s", message)  # the console says it once, the CLI's line
    else:
        error = (
            e.to_dict()
            if isinstance(e, DistmlError)
            else {"type": type(e).__name__, "message": str(e)}
        )
        log.error("run failed: %s", e)
    _trace.error("traceback:\n%s", traceback.format_exc())
    manifest.update(
        status="interrupted" if stopped else "failed",
        finished_at=time.time(),
        timings=_round(timings),
        error=error,
    )
    try:
        run_dir.write_json("manifest.json", manifest)
    except BaseException as write_error:  # e.g. the disk is full: say so, raise the cause
        log.error("manifest.json could not record the failure: %s", write_error)
    return e


_report_warmup: Any = None  # the thread of _warm_report
_stopping: Any = None  # the cluster's stop, running while the outputs are written


def _stopped(timings: dict) -> None:
    """Wait for the cluster's stop (:class:`~distml.runtime.cluster.Stopping`), if one runs."""
    global _stopping
    stopping, _stopping = _stopping, None
    if stopping is not None:
        timings["cluster_stop_s"] = stopping.join()
        if stopping.error is not None:
            log.warning("the cluster did not stop cleanly: %s", stopping.error)


def _warm_report() -> None:
    """Start :func:`distml.report.warm_up` in a background thread: the report's imports and
    first figure (about half of its time) overlap the job instead of following it."""
    import threading

    from distml.report import warm_up

    global _report_warmup
    _report_warmup = threading.Thread(target=warm_up, name="distml-report-warmup", daemon=True)
    _report_warmup.start()


def _report(run_dir, manifest: dict, timings: dict, t_start: float) -> dict:
    """Write ``report.html`` (:mod:`distml.report`); a failure is a warning here and in the
    manifest, never a failed run. Adds ``report_s`` to the manifest's timings."""
    progress.current().stage("report")
    t0 = time.perf_counter()
    if _report_warmup is not None:
        _report_warmup.join()  # one thread draws with matplotlib at a time
    try:
        built = build_report(run_dir.path, manifest)
        out = {"path": "report.html", "sections": built["sections"]}
        if built["errors"]:
            out["section_errors"] = built["errors"]
            log.warning(
                "report.html: %d section(s) could not be drawn: %s",
                len(built["errors"]),
                "; ".join(built["errors"]),
            )
    except Exception as e:  # the report never fails the run
        out = {"error": {"type": type(e).__name__, "message": str(e)}}
        log.warning("report.html was not written: %s: %s", type(e).__name__, e)
        _trace.warning("report traceback:\n%s", traceback.format_exc())
    timings["report_s"] = time.perf_counter() - t0
    _stopped(timings)  # it ran beside the writing and the report
    timings["total_s"] = time.time() - t_start
    manifest["timings"] = _round(timings)
    return out


def _execute(job, job_spec, info, run_dir, address, resume, manifest, timings, up=None):
    """Run the job on the cluster: ``up`` (the ClusterInfo of one already up for the run,
    left up), else the one :func:`~distml.runtime.cluster.cluster` gives."""
    from distml.jobs.base import RunContext
    from distml.runtime.cluster import Stopping, cluster, local_resources

    global _stopping
    t0 = time.perf_counter()
    res = job_spec.resources
    progress.current().stage("cluster")
    with ExitStack() as stack:
        preload = run_preload = job.worker_modules()
        driver = job.driver_modules()
        if job_spec.tune is not None:
            from distml.tune import driver_modules, worker_modules

            preload, driver = worker_modules(job), driver_modules(job)
            # a search's trials on the warm cluster: Tune and the warm cluster's libraries,
            # imported as their processes start (docs/clusters.md, "Runs of many tasks")
            run_preload = (*preload, warm_workers.WARM_LIST)
        cl = stack.enter_context(
            nullcontext(up)
            if up is not None
            else cluster(
                address,
                preload=preload,
                run_preload=run_preload,
                driver_preload=driver,
                # a run's own cluster starts Ray's dashboard head only for a Train worker group
                head=job.train_execution(info, local_resources()) is not None,
                store_bytes=job.object_store_bytes(info, local_resources()),
            )
        )
        interrupts.rearm()
        if up is None:
            timings["cluster_start_s"] = time.perf_counter() - t0
        _warm_report()  # report.html's imports and fonts while the job runs
        manifest["cluster"] = {
            "mode": cl.mode,
            "address": cl.address,
            "address_source": cl.address_source,
            "resources": cl.resources,
            "requested": res.model_dump(),
            **({"warm": cl.warm} if getattr(cl, "warm", None) else {}),
            **({"preload": list(preload)} if up is None and cl.mode == "local" and preload else {}),
        }
        t1 = time.perf_counter()
        ctx = RunContext(job_spec, info, run_dir, cl, log, resume)
        progress.current().stage("train", "search" if job_spec.tune is not None else "")
        try:
            if job_spec.tune is not None:
                from distml.tune import run_search

                out = run_search(job, ctx)
            else:
                out = job.run(ctx)
                if out is not None:
                    from distml.jobs._resume import record_resume

                    record_resume(out, ctx)  # --resume: from what, or why not (never silent)
        finally:
            progress.current().close_channel()  # workers' progress actor, before Ray goes
        timings["job_s"] = time.perf_counter() - t1
        _stopping = Stopping(stack.pop_all())  # Ray stops while the outputs are written
    if out is None:
        raise JobFailed(f"{job_spec.kind} job returned no output")
    return out


def _seeds(spec: JobSpec) -> dict[str, Any]:
    split = spec.data.split_spec
    out: dict[str, Any] = {"split": split.seed if split is not None else None}
    params = getattr(getattr(spec, "model", None), "params", None)
    if isinstance(params, dict):
        for key in ("seed", "random_state"):
            if key in params:
                out[f"model.{key}"] = params[key]
    if spec.tune is not None:
        out["tune.seed"] = spec.tune.seed
    return out


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in d.items()}


def validate(
    spec: "str | os.PathLike | Mapping | JobSpec",
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    *,
    check_data: bool = True,
    data: Any = None,
    test_data: Any = None,
) -> JobSpec:
    """Validate a spec (and its data, unless ``check_data=False``) without starting a cluster.

    ``data`` (``test_data``): a frame as :func:`run` takes it, standing for ``data.source``
    (``data.test_source``); the spec returned names it there (``"data="``). Checked as
    :func:`run` checks it before any cluster work: its type, and the columns the spec names.
    A pandas DataFrame also gets every check of a file source (it is written as parquet to a
    temporary folder, removed after; messages name the frame). The rows of a Dask, Ray or
    Spark frame are checked when :func:`run` stages them, which takes its cluster (or Spark).

        distml.validate("jobs/quickstart.yaml", data=train_df)
    """
    from distml.runtime import frames as fr

    frames = fr.describe_all(data=data, test_data=test_data)
    merged = _merged(overrides, {})
    job_spec = load_spec(spec, {**merged, **fr.spec_fields(frames, merged, None)})
    if not check_data:
        return job_spec
    from distml.runtime.tracking import check_available

    check_available(job_spec)  # this machine runs it: its environment counts (not for submit)
    if not frames:
        check_source(job_spec)
        return job_spec
    fr.check_spec_columns(frames, job_spec)  # names: every frame
    if all(f.family == "pandas" for f in frames.values()):  # rows: written with no cluster
        import tempfile

        with tempfile.TemporaryDirectory(prefix="distml-validate-") as tmp:
            try:
                fr.stage_all(frames, tmp)
                check_source(load_spec(job_spec, fr.spec_fields(frames, merged, tmp)))
            except BaseException as e:
                fr.relabel(e, frames, tmp)  # name the frame, not the temporary folder
                raise
    return job_spec


def check_source(job_spec: JobSpec, job: Any = None) -> Any:
    """The kind's data checks of ``job_spec``'s source (and every searched value's): its
    DataInfo. Raises SpecError/DataError."""
    from distml.registry import kind_module

    info = (job or kind_module(job_spec.kind).Job(job_spec)).check_data()
    if job_spec.tune is not None:
        from distml.spec.tune import check_trials

        check_trials(job_spec)  # every searched value passes the kind's own checks
    return info


__all__ = ["run", "validate", "build_report", "Result"]


def build_report(run_dir: Any, manifest: dict | None = None) -> dict:
    """Write ``RUN_DIR/report.html`` and return ``{"path", "sections", "errors", "seconds"}``:
    the generic sections (metrics, plots, tables the run holds) plus the sections its kind's Job
    declares (``report_sections()``); ``manifest`` overrides ``manifest.json``.

    >>> distml.build_report("runs/quickstart/20250101-000000-abcdef")   # doctest: +SKIP
    """
    from distml.report import build_report as build

    return build(run_dir, manifest, kind_report_sections(run_dir, manifest))


def kind_report_sections(run_dir: Any, manifest: dict | None = None) -> list:
    """The report section builders the run's kind declares ([] for an unknown or unavailable
    kind or an unreadable manifest: the generic sections still render)."""
    import json
    from pathlib import Path

    from distml.registry import KINDS, job_class

    try:
        m = (
            manifest
            if manifest is not None
            else json.loads((Path(run_dir) / "manifest.json").read_text())
        )
        kind = m.get("kind")
        return list(job_class(kind).report_sections()) if kind in KINDS else []
    except (OSError, ValueError, AttributeError, ImportError):
        return []
