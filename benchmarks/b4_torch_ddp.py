"""B4 — DDP torch training: ``distml run`` (kind torch, 2 Ray Train workers, gloo) vs the same
loop under ``torchrun --nproc_per_node=2`` (``benchmarks/b4_torchrun_loop.py``).

Workload: an MLP (784 → 256 → 128 → 10, ReLU) on 60k × 784 synthetic rows (10 classes) from one
parquet file, valid 0.1, 3 epochs, global batch 256, Adam 1e-3, one thread per worker. The figure
that matters is the in-loop ratio — distml's epoch loop (``execution.timings_s.loop_s``, rank 0:
DDP steps, per-epoch all-reduced valid figures, Train reports/checkpoints) over torchrun's
(``loop_s``: the same steps and valid figures, no reporting); startup (cluster, worker group,
data) and the whole wall clock are reported beside it. ``--quick``: 6k rows, once.

``distml_warm`` is the same ``distml run`` on a warm local cluster (``distml cluster start``
once before the timed runs, with its own state folder; stopped after): the run connects instead
of starting Ray, so its start-up is the worker group and the data. The cold side runs with
another state folder and never finds it; a warm-side run whose manifest does not say
``cluster.mode: warm`` is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from benchmarks import _harness as H

TITLE = "B4 torch MLP DDP on 2 Ray Train workers vs the same loop under torchrun"
PACKAGES = H.DEFAULT_PACKAGES + ("torch",)
LOOP = Path(__file__).resolve().parent / "b4_torchrun_loop.py"
FEATURES, CLASSES, HIDDEN, EPOCHS, BATCH, LR = 784, 10, [256, 128], 3, 256, 1e-3
TARGET_IN_LOOP = 1.05
TARGET_STARTUP = 2.0  # BENCHMARKS.md: start-up ≤ 2× torchrun's


def _data(rows: int, opts: H.Options) -> dict:
    from distml.runtime.datasets import generate_dataset

    out = opts.workdir / f"data-{rows}"
    gen = generate_dataset(
        f"synthetic:classification?rows={rows}&features={FEATURES}"
        f"&classes={CLASSES}&informative=20&seed=4",
        out,
    )
    return {"dir": str(out), "rows": gen["rows"], "bytes": gen["bytes"]}


def _spec(data: dict, opts: H.Options, cuda: bool) -> Path:
    spec = {
        "name": "b4",
        "kind": "torch",
        "data": {
            "source": f"{data['dir']}/*.parquet",
            "target": "target",
            "split": {"valid": 0.1, "test": 0.0, "seed": 42, "stratify": True},
        },
        "model": {
            "hidden": HIDDEN,
            "epochs": EPOCHS,
            "batch_size": BATCH,
            "lr": LR,
            "task": "classification",
            "optimizer": "adam",
        },
        "resources": {
            "num_workers": 2,
            "cpus_per_worker": opts.threads,
            "gpus_per_worker": 0.5 if cuda else 0,
        },
    }
    path = opts.workdir / "b4.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _distml(spec: Path, opts: H.Options, env: dict, n: list[int], warm: bool = False):
    def call() -> dict:
        n[0] += 1
        out = opts.workdir / ("distml-warm-out" if warm else "distml-out") / str(n[0])
        t = H.run_timed(
            [H.bin_path("distml"), "run", str(spec), "--json", "--output", str(out)],
            env,
            timeout=1800,
        )
        res = H.last_json(t.stdout)
        if res.get("status") != "succeeded":
            raise H.BenchmarkError(f"distml run did not succeed: {t.stdout[-800:]}")
        man = json.loads(Path(res["run_dir"], "manifest.json").read_text())
        ex = man["execution"]
        mode = man.get("cluster", {}).get("mode")
        if warm and mode != "warm":
            raise H.BenchmarkError(f"the warm side ran on a {mode!r} cluster, not the warm one")
        return {
            "wall_s": t.wall_s,
            "loop_s": ex["timings_s"]["loop_s"],
            "startup_s": t.wall_s - ex["timings_s"]["loop_s"],
            "valid_accuracy": res["metrics"]["valid"]["accuracy"],
            "execution": ex,
            "stages": man.get("timings", {}),
            "cluster_mode": mode,
        }

    return call


def _torchrun(data: dict, opts: H.Options, env: dict, cuda: bool):
    def call() -> dict:
        cmd = [
            H.bin_path("torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            str(LOOP),
            "--data",
            data["dir"],
            "--hidden",
            ",".join(map(str, HIDDEN)),
            "--epochs",
            str(EPOCHS),
            "--batch-size",
            str(BATCH),
            "--lr",
            str(LR),
        ]
        t = H.run_timed(cmd + (["--cuda"] if cuda else []), env, timeout=1800)
        res = H.last_json(t.stdout)
        return {
            "wall_s": t.wall_s,
            "loop_s": res["loop_s"],
            "startup_s": t.wall_s - res["loop_s"],
            "valid_accuracy": res["valid_accuracy"],
        }

    return call


def run(opts: H.Options, cuda: bool = False) -> dict[str, Any]:
    env = H.isolated_env(opts.workdir / "home", opts.threads)
    env["DISTML_STATE_DIR"] = str(opts.workdir / "no-warm")  # the cold side never finds one
    warm_env = {**env, "DISTML_STATE_DIR": str(opts.workdir / "warm-state")}
    data = _data(6_000 if opts.quick else 60_000, opts)
    H.log(f"[b4] {data['rows']} rows × {FEATURES}, {EPOCHS} epochs, {'nccl' if cuda else 'gloo'}")
    spec = _spec(data, opts, cuda)
    cluster = [H.bin_path("distml"), "cluster"]
    started = H.run_timed([*cluster, "start", "--json"], warm_env)
    try:
        runs = H.alternate(
            {
                "distml": _distml(spec, opts, env, [0]),
                "torchrun": _torchrun(data, opts, env, cuda),
                "distml_warm": _distml(spec, opts, warm_env, [0], warm=True),
            },
            opts.reps,
            opts.warmup,
            H.log,
        )
    finally:
        H.run_timed([*cluster, "stop", "--json"], warm_env)
    d, b, w = runs["distml"], runs["torchrun"], runs["distml_warm"]
    d_loop, b_loop = H.stats([s["loop_s"] for s in d]), H.stats([s["loop_s"] for s in b])
    ratio = H.ratio(d_loop["median"], b_loop["median"])
    acc = {"distml": d[-1]["valid_accuracy"], "torchrun": b[-1]["valid_accuracy"]}
    w_loop, w_start = H.stats([s["loop_s"] for s in w]), H.stats([s["startup_s"] for s in w])
    b_start = H.stats([s["startup_s"] for s in b])
    acc_warm = w[-1]["valid_accuracy"]
    stages = ("validate_s", "cluster_start_s", "job_s", "cluster_stop_s", "write_s", "total_s")
    return {
        "workload": {
            "rows": data["rows"],
            "features": FEATURES,
            "classes": CLASSES,
            "hidden": HIDDEN,
            "epochs": EPOCHS,
            "global_batch": BATCH,
            "backend": "nccl" if cuda else "gloo",
        },
        "distml": {
            "loop_s": d_loop,
            "wall_s": H.stats([s["wall_s"] for s in d]),
            "startup_s": H.stats([s["startup_s"] for s in d]),
            "execution": d[-1]["execution"],
            "stages_median_s": {k: H.median_of(d, "stages", k) for k in stages},
        },
        "distml_warm": {
            "loop_s": w_loop,
            "wall_s": H.stats([s["wall_s"] for s in w]),
            "startup_s": w_start,
            "stages_median_s": {k: H.median_of(w, "stages", k) for k in stages},
            "cluster_mode": w[-1]["cluster_mode"],
            "valid_accuracy": acc_warm,
        },
        "torchrun": {
            "loop_s": b_loop,
            "wall_s": H.stats([s["wall_s"] for s in b]),
            "startup_s": H.stats([s["startup_s"] for s in b]),
        },
        "valid_accuracy": acc,
        "summary": {
            "in_loop_ratio": ratio,
            "target": TARGET_IN_LOOP,
            "meets_target": ratio is not None and ratio <= TARGET_IN_LOOP,
            "end_to_end_ratio": H.ratio(
                H.stats([s["wall_s"] for s in d])["median"],
                H.stats([s["wall_s"] for s in b])["median"],
            ),
            "startup_s": {
                "distml": H.stats([s["startup_s"] for s in d])["median"],
                "torchrun": H.stats([s["startup_s"] for s in b])["median"],
            },
            "accuracy_diff": abs(acc["distml"] - acc["torchrun"]),
            "equal": abs(acc["distml"] - acc["torchrun"]) <= 0.02
            and abs(acc_warm - acc["torchrun"]) <= 0.02,
            "in_loop_ratio_warm": H.ratio(w_loop["median"], b_loop["median"]),
            "end_to_end_ratio_warm": H.ratio(
                H.stats([s["wall_s"] for s in w])["median"],
                H.stats([s["wall_s"] for s in b])["median"],
            ),
            "startup_ratio": H.ratio(
                H.stats([s["startup_s"] for s in d])["median"], b_start["median"]
            ),
            "startup_ratio_warm": H.ratio(w_start["median"], b_start["median"]),
            "target_startup_ratio": TARGET_STARTUP,
            "startup_s_warm": w_start["median"],
            "accuracy_diff_warm": abs(acc_warm - acc["torchrun"]),
            "warm_cluster_start_s": round(started.wall_s, 3),
        },
    }


if __name__ == "__main__":  # pragma: no cover - use ``python -m benchmarks b4``
    raise SystemExit("run: python -m benchmarks b4 [--quick]")
