"""Run a distml spec from a Spark (or Databricks) driver: Ray on the Spark cluster, then distml.

``ray.util.spark.setup_ray_cluster`` starts a Ray head on the Spark driver and Ray worker nodes
inside a background Spark job, and sets ``RAY_ADDRESS``; :func:`distml.run` then connects to
that cluster (distml follows ``RAY_ADDRESS``) and runs the spec there. Ray is shut down at the
end, whatever happened. The exit code is distml's (0 / 2 / 3 / 4 / 130,
docs/batch_platforms.md); the last stdout line is distml's JSON result.

    spark-submit --master local[2] examples/spark/train_on_spark.py jobs/quickstart.yaml \\
        --output runs --run-id s1 --max-worker-nodes 1

On a Spark cluster (standalone, YARN) or Databricks, write the run directory to storage every
node sees (``/dbfs/...`` or a Unity Catalog volume) and size the Ray worker nodes with
``--cpus-per-node``/``--gpus-per-node`` (given together; Spark honours them only with stage
scheduling: Spark >= 3.4 or Databricks Runtime >= 12, never in local mode). On Databricks, run
the same ``main([...])`` from a notebook or a Python task.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_INVALID, EXIT_CLUSTER = 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run a distml spec on Ray on Spark.")
    p.add_argument("spec", help="distml spec (YAML)")
    p.add_argument("--output", required=True, help="output root on storage every node sees")
    p.add_argument("--run-id", help="run id (a finished id is reported, not rerun)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="spec override (repeatable)",
    )
    p.add_argument(
        "--max-worker-nodes", type=int, default=2, help="Ray worker nodes on the Spark workers"
    )
    p.add_argument(
        "--cpus-per-node",
        type=int,
        default=None,
        help="CPUs per Ray worker node (default: spark.task.cpus); needs stage "
        "scheduling (not in local mode)",
    )
    p.add_argument(
        "--gpus-per-node",
        type=int,
        default=None,
        help="GPUs per Ray worker node (default 0 when --cpus-per-node is given); "
        "needs --cpus-per-node",
    )
    p.add_argument(
        "--ray-temp-root-dir",
        default=None,
        help="where Ray on Spark keeps its session files (default: Ray's)",
    )
    return p


def _fail(code: int, message: str, error: dict | None = None) -> int:
    """One line for people (stderr), then distml's JSON result as the last stdout line (a
    scheduler reads it; spark-submit merges the driver's stderr into its stdout)."""
    print(f"train_on_spark: {message}", file=sys.stderr, flush=True)
    if error is None:
        error = {
            "type": "UsageError" if code == EXIT_INVALID else "ClusterError",
            "message": message,
            "exit_code": code,
        }
    print(json.dumps({"status": "failed", "error": error}), flush=True)
    return code


def _node_resources(args: argparse.Namespace) -> tuple[int | None, int | None] | str:
    """(cpus, gpus) per Ray worker node, both or neither (Ray refuses one alone), or why not."""
    if args.gpus_per_node is not None and args.cpus_per_node is None:
        return "--gpus-per-node needs --cpus-per-node too (Ray on Spark sizes nodes by both)"
    if args.cpus_per_node is None:
        return None, None
    if args.cpus_per_node < 1 or (args.gpus_per_node or 0) < 0:
        return "--cpus-per-node must be >= 1 and --gpus-per-node >= 0"
    return args.cpus_per_node, args.gpus_per_node or 0


def _stage_scheduling(spark) -> str | None:
    """Why this Spark cannot give Ray worker nodes a CPU/GPU size, or None when it can
    (Ray's own rule: stage scheduling, i.e. not local mode, and Spark >= 3.4 or DBR >= 12)."""
    master = spark.sparkContext.master
    if master == "local" or master.startswith("local["):
        return (
            f"Spark in local mode ({master}) cannot size Ray worker nodes: drop "
            "--cpus-per-node/--gpus-per-node (each node then gets spark.task.cpus CPUs), "
            "or run on a Spark cluster (spark://, YARN) or Databricks"
        )
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        major = os.environ["DATABRICKS_RUNTIME_VERSION"].split(".")[0]
        if major.isdigit() and int(major) >= 12:
            return None
    import pyspark

    release = tuple(int(x) for x in pyspark.__version__.split(".")[:2] if x.isdigit())
    if release < (3, 4):
        return (
            f"Spark {pyspark.__version__} has no stage scheduling, so it cannot size Ray "
            "worker nodes: drop --cpus-per-node/--gpus-per-node (each node then gets "
            "spark.task.cpus CPUs) or use Spark >= 3.4 / Databricks Runtime >= 12"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    resources = _node_resources(args)
    if isinstance(resources, str):
        return _fail(EXIT_INVALID, resources)
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        return _fail(
            EXIT_INVALID,
            "needs pyspark (run it with spark-submit or on Databricks); "
            'install it with: pip install "distml[spark]"',
        )
    import shutil

    if shutil.which("ray") is None:  # Ray on Spark runs `ray start` from PATH on every node
        return _fail(
            EXIT_INVALID,
            "the `ray` command is not on PATH: activate the virtualenv "
            "that has distml (its bin/ folder) before spark-submit",
        )
    import distml
    from distml.errors import DistmlError

    try:  # the spec before any Spark or Ray work: a bad spec is exit 2 in a second
        distml.validate(args.spec, args.overrides, check_data=False)
    except DistmlError as e:
        return _fail(e.exit_code, str(e), e.to_dict())

    spark = SparkSession.builder.appName("distml").getOrCreate()  # setup_ray_cluster uses it
    cpus, gpus = resources
    if cpus is not None:
        why = _stage_scheduling(spark)
        if why is not None:
            return _fail(EXIT_INVALID, why)

    from ray.util.spark import setup_ray_cluster, shutdown_ray_cluster

    try:
        setup_ray_cluster(
            max_worker_nodes=args.max_worker_nodes,
            num_cpus_worker_node=cpus,
            num_gpus_worker_node=gpus,
            ray_temp_root_dir=args.ray_temp_root_dir,
        )
    except (RuntimeError, ValueError) as e:  # Ray could not start on this Spark
        shutdown_ray_cluster_quietly(shutdown_ray_cluster)
        return _fail(EXIT_CLUSTER, f"could not start Ray on Spark: {str(e).splitlines()[0]}")
    try:
        result = distml.run(args.spec, args.overrides, output=args.output, run_id=args.run_id)
    except DistmlError as e:
        code, message, error = e.exit_code, str(e), e.to_dict()
    except KeyboardInterrupt:
        code, message = 130, "interrupted"
        error = {"type": "Interrupted", "message": message, "exit_code": code}
    else:
        code = 0
    finally:
        # the Spark session is left as it was (shared on Databricks)
        shutdown_ray_cluster_quietly(shutdown_ray_cluster)
    if code:
        return _fail(code, message, error)
    print(json.dumps(result.to_dict(), default=str), flush=True)
    return 0


def shutdown_ray_cluster_quietly(shutdown) -> None:
    """Stop Ray on Spark if it is up (shutting down nothing is not an error)."""
    try:
        shutdown()
    except RuntimeError:  # "No active ray cluster to shut down"
        pass


if __name__ == "__main__":
    sys.exit(main())
