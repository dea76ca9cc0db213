"""Command line: ``distml run | validate | schema | data generate``.

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
            sp.add_argument("--json", action="store_true",
                            help="print exactly one JSON object on stdout")
        sp.add_argument("--debug", action="store_true", help="show tracebacks")

    r = sub.add_parser("run", help="run a job spec (local Ray unless --address/RAY_ADDRESS)")
    r.add_argument("spec", help="YAML spec file")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a spec field, e.g. --set model.params.max_depth=8 (repeatable)")
    r.add_argument("--output", help="output root (default: the spec's output.dir)")
    r.add_argument("--address", help="Ray cluster address (GCS HOST:PORT or 'auto')")
    r.add_argument("--run-id", help="run id; rerunning a finished run id is a no-op")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run (same id)")
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
    return p


def _version() -> str:
    from distml import __version__

    return f"distml {__version__}"


@contextmanager
def _stdout_to_stderr() -> Iterator[int]:
    """Send fd 1 to fd 2 (so nothing but our JSON reaches stdout); yields the saved stdout fd."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield saved
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _setup_logging(debug: bool) -> None:
    logger = logging.getLogger("distml")
    if not any(getattr(h, "_distml_cli", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("distml: %(message)s"))
        h._distml_cli = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_INVALID
    if args.command == "data" and args.data_command is None:
        parser.parse_args(["data", "--help"])
    as_json = getattr(args, "json", False)
    debug = getattr(args, "debug", False)
    _setup_logging(debug)
    try:
        if as_json:
            with _stdout_to_stderr():
                payload, code = _dispatch(args)
            print(json.dumps({k: v for k, v in payload.items() if not k.startswith("_")},
                             default=str))
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
        err = e.to_dict() if isinstance(e, DistmlError) else {"type": type(e).__name__,
                                                               "message": str(e)}
        err["exit_code"] = code
        print(json.dumps({"status": "failed", "error": err}, default=str))
    return code


def _dispatch(args: argparse.Namespace) -> tuple[dict, int]:
    if args.command == "run":
        from distml.api import run

        result = run(args.spec, args.overrides, output=args.output, address=args.address,
                     run_id=args.run_id, resume=args.resume)
        return result.to_dict() | {"_summary": result.summary()}, EXIT_OK
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
    raise DistmlError(f"unknown command {args.command!r}")


def _print_human(args: argparse.Namespace, payload: dict) -> None:
    if "_schema" in payload:
        print(json.dumps(payload["_schema"], indent=2))
    elif "_text" in payload:
        print(payload["_text"], end="")
    elif "_summary" in payload:
        print(payload["_summary"])
    elif args.command == "validate":
        print(f"ok: {payload['name']} [{payload['kind']}] is valid")
    else:
        print(json.dumps({k: v for k, v in payload.items() if not k.startswith("_")}, indent=2,
                         default=str))
