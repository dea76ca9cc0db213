"""``python -m benchmarks NAME [--quick] [--reps N] [--warmup N] [--threads N]``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import REGISTRY, load
from benchmarks import _harness as H


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("name", choices=sorted(REGISTRY), help="benchmark to run")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 1 repetition, no warm-up, smallest size; writes "
        "results/<name>.quick.json",
    )
    ap.add_argument(
        "--reps",
        type=int,
        default=None,
        help="timed repetitions per side (>= 3 for real figures; default 3)",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed runs per side first (default 1; 0 with --quick)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for both sides (OMP_NUM_THREADS etc., xgboost nthread)",
    )
    ap.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/<name>.json)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = ap.parse_args(argv)

    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    if reps < 1 or warmup < 0 or args.threads < 1:
        ap.error("--reps and --threads must be >= 1, --warmup >= 0")
    if not args.quick and reps < 3:
        H.log(f"warning: {reps} repetition(s); BENCHMARKS.md asks for >= 3")
    mod = load(args.name)
    work = Path(tempfile.mkdtemp(prefix=f"dml-{args.name}-"))
    opts = H.Options(quick=args.quick, reps=reps, warmup=warmup, threads=args.threads, workdir=work)
    started = time.time()
    machine_before = H.machine()
    H.log(
        f"[{args.name}] {mod.TITLE} (quick={args.quick}, reps={reps}, warmup={warmup}, "
        f"threads={args.threads}, workdir={work})"
    )
    try:
        body = mod.run(opts)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "name": args.name,
        "title": mod.TITLE,
        "quick": args.quick,
        "reps": reps,
        "warmup": warmup,
        "started_at": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(),
        "duration_s": round(time.time() - started, 1),
        "machine": {**machine_before, "loadavg_after": H.machine()["loadavg"]},
        "versions": H.versions(getattr(mod, "PACKAGES", H.DEFAULT_PACKAGES)),
        "threads": {"pinned": args.threads, "env": {v: str(args.threads) for v in H.THREAD_VARS}},
        "argv": sys.argv[1:] if argv is None else list(argv),
        **body,
    }
    path = args.output or H.result_path(args.name, args.quick)
    H.write_json_atomic(path, result)
    H.log(f"[{args.name}] wrote {path}")
    print(json.dumps(result.get("summary", {}), indent=2))
    return 0 if result.get("summary", {}).get("equal", True) else 1


if __name__ == "__main__":
    sys.exit(main())
