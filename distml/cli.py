"""Command line: ``distml run | validate | schema | data generate | submit | status | logs | stop |
jobs list | predict | report | runs | cluster start|status|stop``.

A thin layer over :mod:`distml.api`: it parses arguments, maps errors to exit codes (0 ok,
2 invalid spec or data, 3 cluster unreachable, 4 the job failed, 1 a bug) and prints. Under
``--json`` exactly one JSON object goes to stdout; everything else (logs, Ray's own output,
even from C++) goes to stderr. Never imports Ray: ``distml --help`` and ``validate`` stay instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from contextlib import contextmanager
from typing import Iterator

from distml.errors import DistmlError

EXIT_OK, EXIT_BUG, EXIT_INVALID, EXIT_CLUSTER, EXIT_FAILED = 0, 1, 2, 3, 4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distml", description="Declarative modeling jobs on Ray.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
        if json_flag:
            sp.add_argument(
                "--json", action="store_true", help="print exactly one JSON object on stdout"
            )
        sp.add_argument("--debug", action="store_true", help="show tracebacks")

    r = sub.add_parser(
        "run",
        help="run a job spec (--address, RAY_ADDRESS, the warm cluster of "
        "`distml cluster start`, else a local Ray for the run)",
    )
    r.add_argument("spec", help="YAML spec file")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a spec field, e.g. --set model.params.max_depth=8 (repeatable)",
    )
    r.add_argument("--output", help="output root (default: the spec's output.dir)")
    r.add_argument("--address", help="Ray cluster address (GCS HOST:PORT or 'auto')")
    r.add_argument("--run-id", help="run id; rerunning a finished run id is a no-op")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run (same id)")
    r.add_argument(
        "--progress",
        choices=("auto", "rich", "plain", "off"),
        default="auto",
        help="progress display on stderr: auto (default) = rich on a terminal, plain "
        "log lines otherwise, off under --json",
    )
    common(r)

    v = sub.add_parser("validate", help="check a spec and its data; starts no cluster")
    v.add_argument("spec")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    v.add_argument("--no-data", action="store_true", help="check the spec only, not the data")
    common(v)

    s = sub.add_parser("schema", help="print the JSON schema of the spec")
    s.add_argument("--markdown", action="store_true", help="print the field reference instead")
    common(s, json_flag=False)

    d = sub.add_parser("data", help="data utilities")
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    g = dsub.add_parser("generate", help="write a builtin/synthetic source as partitioned parquet")
    g.add_argument("source", help="builtin:NAME or synthetic:KIND?features=..&seed=..")
    g.add_argument("--output", required=True, help="output directory")
    g.add_argument("--rows", type=int, required=True, help="number of rows")
    g.add_argument("--files", type=int, default=1, help="number of parquet files")
    common(g)

    def address(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--address",
            help="Ray Jobs API URL http://HEAD:8265 (default: "
            "RAY_API_SERVER_ADDRESS, then RAY_ADDRESS)",
        )

    sm = sub.add_parser("submit", help="submit a spec to a Ray cluster (Ray Jobs API)")
    sm.add_argument(
        "spec", help="YAML spec file (validated here; its data are checked on the cluster)"
    )
    sm.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a spec field (repeatable)",
    )
    address(sm)
    sm.add_argument(
        "--submission-id",
        help="job id, also the run id; resubmitting an id that exists reports that job instead",
    )
    sm.add_argument(
        "--wait",
        action="store_true",
        help="stream the job's log until it ends, then exit with the job's own "
        "code (0 ok, 2 bad input, 3 cluster, 4 failed, 130 interrupted; 4 when "
        "the job reported none)",
    )
    sm.add_argument(
        "--output",
        help="output root on the cluster (default: the spec's "
        "output.dir); use shared storage for multi-node clusters",
    )
    sm.add_argument(
        "--pip",
        action="append",
        default=[],
        metavar="REQUIREMENT",
        help="add a pip package to the job's runtime_env (repeatable)",
    )
    sm.add_argument(
        "--env",
        dest="env_vars",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="add an environment variable to the job's runtime_env (repeatable)",
    )
    common(sm)

    for name, text in (
        ("status", "show a submitted job's status"),
        ("stop", "stop a submitted job"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("submission_id", metavar="ID")
        address(sp)
        if name == "stop":
            sp.add_argument(
                "--no-wait",
                action="store_true",
                help="return at once instead of waiting until it is STOPPED",
            )
        else:
            sp.add_argument(
                "--wait",
                action="store_true",
                help="wait until the job ends, then exit with its code as `submit --wait` does",
            )
        common(sp)
    lg = sub.add_parser("logs", help="print a submitted job's log")
    lg.add_argument("submission_id", metavar="ID")
    address(lg)
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")
    common(lg, json_flag=False)

    jb = sub.add_parser("jobs", help="jobs on a Ray cluster")
    jsub = jb.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND")
    jl = jsub.add_parser("list", help="list the cluster's distml jobs")
    address(jl)
    jl.add_argument("--all", action="store_true", help="include jobs distml did not submit")
    common(jl)

    pr = sub.add_parser("predict", help="score data with a finished run's model (parquet out)")
    pr.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (_SUCCESS)")
    pr.add_argument("--input", required=True, help="parquet/CSV path, glob, folder or URL")
    pr.add_argument("--output", required=True, help="output folder (partitioned parquet)")
    pr.add_argument(
        "--keep",
        nargs="+",
        action="extend",
        default=[],
        metavar="COL",
        help="input columns copied into the output (e.g. an id)",
    )
    pr.add_argument(
        "--strict", action="store_true", help="refuse input columns the model was not trained on"
    )
    pr.add_argument(
        "--overwrite", action="store_true", help="replace finished predictions already in --output"
    )
    pr.add_argument("--batch-size", type=int, help="rows per scored batch (default 16384)")
    pr.add_argument("--address", help="Ray cluster address (GCS HOST:PORT or 'auto')")
    pr.add_argument(
        "--allow-module",
        action="append",
        default=[],
        metavar="PKG.MOD:CLASS",
        help="let a torch run load this user module (its code runs); repeatable",
    )
    common(pr)

    rp = sub.add_parser("report", help="(re)build a run's report.html")
    rp.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (with manifest.json)")
    rp.add_argument("--open", action="store_true", help="open the report in a web browser")
    common(rp)

    cl = sub.add_parser("cluster", help="a warm local Ray cluster that later runs reuse")
    csub = cl.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND")
    cs = csub.add_parser("start", help="start it (a no-op when it is already up)")
    cs.add_argument("--cpus", type=int, help="CPUs it offers (default: Ray's detection)")
    cs.add_argument("--gpus", type=int, help="GPUs it offers (default: Ray's detection)")
    cs.add_argument(
        "--idle-timeout",
        default="30m",
        metavar="DURATION",
        help="stop it after this long without a run, e.g. 90s, 30m, 2h, none (default 30m)",
    )
    cs.add_argument(
        "--preload",
        metavar="MODULES",
        help="comma-separated modules every worker imports before it takes work "
        "(default: distml's xgboost and sklearn kinds and their libraries; "
        "'none' for none)",
    )
    common(cs)
    common(csub.add_parser("status", help="is it up? (exit 0 up, 3 down or unusable)"))
    common(csub.add_parser("stop", help="stop it (a no-op when it is down)"))

    rs = sub.add_parser("runs", help="list the runs under an output folder")
    rs.add_argument("--output", default="runs", help="output root (default: runs)")
    common(rs)
    return p


def _version() -> str:
    from distml import __version__

    return f"distml {__version__}"


@contextmanager
def _stdout_to_stderr() -> Iterator[int]:
    """Send fd 1 to fd 2 and ``sys.stdout`` to ``sys.stderr`` (so nothing but our JSON reaches
    stdout); yields the saved stdout fd.

    Both levels matter: C++ and child processes write to fd 1, while Ray's driver threads (the
    raylet's warnings, which Ray prints to ``sys.stdout`` even with ``log_to_driver=False``) write
    to whatever Python object ``sys.stdout`` is at that moment, which need not be fd 1 (an
    embedding host or pytest's capture may have replaced it)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    python_stdout = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield saved
    finally:
        sys.stdout.flush()
        sys.stdout = python_stdout
        os.dup2(saved, 1)
        os.close(saved)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, so that neither a second
    ``main()`` nor a later in-process ``distml.run`` writes to the (maybe closed) stream of an
    earlier call."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(debug: bool) -> None:
    logger = logging.getLogger("distml")
    if not any(getattr(h, "_distml_cli", False) for h in logger.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("distml: %(message)s"))
        h._distml_cli = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False


def entry() -> None:
    """The ``distml`` command: :func:`main`, then an exit without the interpreter's teardown
    (:func:`distml.runtime.procs.exit_now`, 0.3 s after a run)."""
    from distml.runtime.procs import exit_now

    exit_now(main())


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_INVALID
    if args.command == "data" and args.data_command is None:
        parser.parse_args(["data", "--help"])
    if args.command == "jobs" and args.jobs_command is None:
        parser.parse_args(["jobs", "--help"])
    if args.command == "cluster" and args.cluster_command is None:
        parser.parse_args(["cluster", "--help"])
    as_json = getattr(args, "json", False)
    debug = getattr(args, "debug", False)
    _setup_logging(debug)
    try:
        if as_json:
            with _stdout_to_stderr():
                payload, code = _dispatch(args)
            print(
                json.dumps({k: v for k, v in payload.items() if not k.startswith("_")}, default=str)
            )
        else:
            payload, code = _dispatch(args)
            _print_human(args, payload)
        return code
    except DistmlError as e:
        return _fail(e, e.exit_code, as_json, debug)
    except KeyboardInterrupt:
        return _fail(DistmlError("interrupted"), 130, as_json, debug)
    except Exception as e:  # a bug: say so, with the traceback
        if not debug:
            traceback.print_exc(file=sys.stderr)
        return _fail(e, EXIT_BUG, as_json, debug, bug=True)


def _fail(e: BaseException, code: int, as_json: bool, debug: bool, bug: bool = False) -> int:
    if debug:
        traceback.print_exc(file=sys.stderr)
    kind = "internal error (please report)" if bug else "error"
    print(f"distml: {kind}: {e}", file=sys.stderr)
    if as_json:
        err = (
            e.to_dict()
            if isinstance(e, DistmlError)
            else {"type": type(e).__name__, "message": str(e)}
        )
        err["exit_code"] = code
        print(json.dumps({"status": "failed", "error": err}, default=str))
    return code


def _dispatch(args: argparse.Namespace) -> tuple[dict, int]:
    if args.command == "run":
        from distml import progress
        from distml.api import run

        mode = progress.resolve_mode(args.progress, json_output=args.json)
        with progress.activate(mode):
            result = run(
                args.spec,
                args.overrides,
                output=args.output,
                address=args.address,
                run_id=args.run_id,
                resume=args.resume,
            )
        summary = result.summary()
        if (result.run_dir / "report.html").is_file():
            summary += f"\nreport: {result.run_dir / 'report.html'}"
        return result.to_dict() | {"_summary": summary}, EXIT_OK
    if args.command == "validate":
        from distml.api import validate

        spec = validate(args.spec, args.overrides, check_data=not args.no_data)
        return {"status": "valid", "name": spec.name, "kind": spec.kind}, EXIT_OK
    if args.command == "schema":
        if args.markdown:
            from distml.spec.reference import markdown

            return {"_text": markdown()}, EXIT_OK
        from distml.spec import json_schema

        return {"_schema": json_schema()}, EXIT_OK
    if args.command == "data" and args.data_command == "generate":
        from distml.runtime.datasets import generate_dataset

        info = generate_dataset(args.source, args.output, rows=args.rows, files=args.files)
        return {"status": "succeeded", **info}, EXIT_OK
    if args.command in ("submit", "status", "logs", "stop", "jobs"):
        return _dispatch_jobs(args)
    if args.command == "predict":
        from distml.scoring import predict

        pred = predict(
            args.run_dir,
            args.input,
            args.output,
            keep=args.keep,
            strict=args.strict,
            batch_size=args.batch_size,
            address=args.address,
            overwrite=args.overwrite,
            allow_module=args.allow_module,
        )
        return pred.to_dict() | {"_summary": pred.summary()}, EXIT_OK
    if args.command == "report":
        return _report(args)
    if args.command == "cluster":
        return _cluster(args)
    if args.command == "runs":
        from distml.report import format_runs, list_runs

        rows = list_runs(args.output)
        return {
            "status": "succeeded",
            "runs": [r.to_dict() for r in rows],
            "_text": format_runs(rows),
        }, EXIT_OK
    raise DistmlError(f"unknown command {args.command!r}")


def _report(args: argparse.Namespace) -> tuple[dict, int]:
    from pathlib import Path

    from distml.api import build_report
    from distml.errors import DataError

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise DataError(
            f"RUN_DIR {args.run_dir!r} is not a directory; give a run directory "
            "such as runs/NAME/RUN_ID (see `distml runs`)"
        )
    if not (run_dir / "manifest.json").is_file():
        raise DataError(
            f"RUN_DIR {args.run_dir!r} is not a distml run directory: it has no manifest.json"
        )
    built = build_report(run_dir)
    if args.open:
        import webbrowser

        webbrowser.open(Path(built["path"]).resolve().as_uri())
    text = f"report: {built['path']} ({len(built['sections'])} sections)\n"
    for err in built["errors"]:
        text += f"warning: section {err}\n"
    # "path" as in build_report() and the docs; "report" is the old name of the same value,
    # kept one release for scripts that read it (deprecated, see docs/reports.md)
    return {
        "status": "succeeded",
        "path": built["path"],
        "report": built["path"],
        "sections": built["sections"],
        "errors": built["errors"],
        "_text": text,
    }, EXIT_OK


def _cluster(args: argparse.Namespace) -> tuple[dict, int]:
    """cluster start | status | stop: the warm local cluster (distml.runtime.warm)."""
    from distml.runtime import warm

    if args.cluster_command == "start":
        preload = warm.PRELOAD
        if args.preload is not None:
            preload = tuple(
                m.strip()
                for m in args.preload.split(",")
                if m.strip() and args.preload.strip().lower() != "none"
            )
        out = warm.start(args.cpus, args.gpus, warm.parse_duration(args.idle_timeout), preload)
        verb = "is already up" if out["already_running"] else "is up"
        return out | {
            "_text": f"warm cluster {verb} at {out['address']}: {_warm_line(out)}\n"
            f"dashboard: {out['dashboard_url']} (token in "
            f"{out['token_path']})\nstop it with `distml cluster stop`\n"
        }, 0
    if args.cluster_command == "stop":
        out = warm.stop()
        return out | {"_text": out["message"] + "\n"}, EXIT_OK
    out = warm.status()
    if out["status"] != "up":
        return out | {"_text": f"warm cluster: down ({out['message']})\n"}, EXIT_CLUSTER
    text = (
        f"warm cluster: up at {out['address']}: {_warm_line(out)}; idle {out['idle_s']:.0f}s,"
        f" {out['active_runs']} run(s) connected\ndashboard: {out['dashboard_url']}\n"
    )
    if "mismatch" in out:
        return out | {"_text": text, "_error": out["mismatch"]}, EXIT_CLUSTER
    return out | {"_text": text}, EXIT_OK


def _warm_line(rec: dict) -> str:
    cpus = rec.get("num_cpus")
    idle = rec.get("idle_timeout_s") or 0
    return (
        f"distml {rec['distml_version']}, ray {rec['ray_version']}, "
        f"{'all' if cpus is None else cpus} CPUs; "
        + (f"stops after {idle:g}s idle" if idle else "no idle timeout")
    )


def _env_pairs(items: list[str]) -> dict[str, str]:
    from distml.errors import SpecError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--env must be KEY=VALUE; got {item!r}")
        out[key] = value
    return out


def _job_payload(sub) -> tuple[dict, int]:
    """A finished Submission as the command's JSON object and exit code: the job's own distml
    code when it reported one (2, 3, 4, 130), 4 for any other failure."""
    payload = sub.to_dict() | {"_summary": sub.summary()}
    if sub.finished and not sub.succeeded:
        payload["_error"] = payload["error"]["message"]
        return payload, sub.exit_code or EXIT_FAILED
    return payload, EXIT_OK


def _dispatch_jobs(args: argparse.Namespace) -> tuple[dict, int]:
    """submit / status / logs / stop / jobs list: the Ray Jobs API through distml.remote."""
    from distml import remote as jobs

    # the job's log: stdout for people, stderr under --json (stdout holds only the JSON)
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    if args.command == "submit":
        sub = jobs.submit(
            args.spec,
            args.overrides,
            address=args.address,
            submission_id=args.submission_id,
            wait=args.wait,
            output=args.output,
            pip=args.pip,
            env_vars=_env_pairs(args.env_vars),
            stream=stream if args.wait else None,
        )
        if not args.wait:
            return sub.to_dict() | {"_summary": sub.summary()}, EXIT_OK
        return _job_payload(sub)
    if args.command == "status":
        sub = jobs.status(args.submission_id, address=args.address, wait=args.wait)
        if args.wait:
            return _job_payload(sub)
        return sub.to_dict() | {"_summary": sub.summary()}, EXIT_OK
    if args.command == "stop":
        sub = jobs.stop(args.submission_id, address=args.address, wait=not args.no_wait)
        return sub.to_dict() | {"_summary": sub.summary()}, EXIT_OK
    if args.command == "logs":
        if args.follow:
            jobs.follow_logs(args.submission_id, address=args.address, stream=stream)
            return {"_text": ""}, EXIT_OK
        return {"_text": jobs.logs(args.submission_id, address=args.address)}, EXIT_OK
    found = jobs.list_jobs(address=args.address, all_jobs=args.all)
    return {
        "status": "succeeded",
        "jobs": [j.to_dict() for j in found],
        "_text": jobs.format_table(found) + "\n",
    }, EXIT_OK


def _print_human(args: argparse.Namespace, payload: dict) -> None:
    if "_schema" in payload:
        print(json.dumps(payload["_schema"], indent=2))
    elif "_text" in payload:
        print(payload["_text"], end="")
        if "_error" in payload:
            print(f"distml: error: {payload['_error']}", file=sys.stderr)
    elif "_summary" in payload:
        print(payload["_summary"])
        if "_error" in payload:
            print(f"distml: error: {payload['_error']}", file=sys.stderr)
    elif args.command == "validate":
        print(f"ok: {payload['name']} [{payload['kind']}] is valid")
    else:
        print(
            json.dumps(
                {k: v for k, v in payload.items() if not k.startswith("_")}, indent=2, default=str
            )
        )
