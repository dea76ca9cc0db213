"""CPU seconds of the commands that must feel instant (issue 14: ``distml --help`` and
``distml validate`` under 0.5 s of CPU), and of the warm cluster's ``status``.

Each command runs in a fresh process ``--reps`` times; its CPU time is the growth of
``getrusage(RUSAGE_CHILDREN)`` user + sys across the call (interpreter start and imports
included). The tests hold what keeps these low (no heavy import: tests/unit/test_warm_state.py);
the seconds live here. ``python -m benchmarks.probe_cli_cpu [--reps N]``; writes
``benchmarks/results/probe_cli_cpu.json``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import _harness as H

TARGET_CPU_S = 0.5
COMMANDS = {
    "help": ["--help"],
    "validate_no_data": ["validate", "jobs/quickstart.yaml", "--no-data"],
    "validate": ["validate", "jobs/quickstart.yaml"],
    "cluster_status": ["cluster", "status", "--json"],
}


def cpu_of(cmd: list[str], env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, env=env, cwd=H.ROOT, capture_output=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.probe_cli_cpu")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dcpu") as tmp:
        env = H.isolated_env(Path(tmp) / "h", 1)
        env["DISTML_STATE_DIR"] = str(Path(tmp) / "state")
        cpu_of([H.PYTHON, "-c", "import distml"], env)  # byte-compile caches, page cache
        res = {}
        for name, argv_ in COMMANDS.items():
            vals = [cpu_of([H.PYTHON, "-m", "distml", *argv_], env) for _ in range(args.reps)]
            res[name] = {
                "cpu_s_median": round(statistics.median(vals), 4),
                "cpu_s_min": round(min(vals), 4),
                "values": [round(v, 4) for v in vals],
                "meets_target": statistics.median(vals) <= TARGET_CPU_S,
            }
            H.log(f"{name}: median {res[name]['cpu_s_median']:.3f} s CPU")
    out = {
        "name": "probe_cli_cpu",
        "reps": args.reps,
        "target_cpu_s": TARGET_CPU_S,
        "machine": H.machine(),
        "versions": H.versions(),
        "commands": res,
    }
    H.write_json_atomic(H.RESULTS / "probe_cli_cpu.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
