"""Run a distml spec from a Spark (or Databricks) driver: Ray on the Spark cluster, then distml.

``ray.util.spark.setup_ray_cluster`` starts a Ray head on the Spark driver and Ray worker nodes
inside a background Spark job, and sets ``RAY_ADDRESS``; :func:`distml.run` then connects to
that cluster (distml follows ``RAY_ADDRESS``) and runs the spec there. Ray is shut down at the
end, whatever happened. The exit code is distml's (0 / 2 / 3 / 4, docs/batch_platforms.md).

    spark-submit examples/spark/train_on_spark.py jobs/quickstart.yaml \\
        --output /dbfs/distml/runs --run-id nightly-2026-11-21 --max-worker-nodes 4

On Databricks, run the same ``main([...])`` from a notebook or a Python task; write the run
directory to storage every node sees (``/dbfs/...`` or a Unity Catalog volume).
"""

from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run a distml spec on Ray on Spark.")
    p.add_argument("spec", help="distml spec (YAML)")
    p.add_argument("--output", required=True, help="output root on storage every node sees")
    p.add_argument("--run-id", help="run id (a finished id is reported, not rerun)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="PATH=VALUE", help="spec override (repeatable)")
    p.add_argument("--max-worker-nodes", type=int, default=2,
                   help="Ray worker nodes on the Spark workers")
    p.add_argument("--cpus-per-node", type=int, default=None,
                   help="CPUs per Ray worker node (default: a whole Spark worker)")
    p.add_argument("--gpus-per-node", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        print("train_on_spark: needs pyspark (run it with spark-submit or on Databricks); "
              "install it with: pip install pyspark", file=sys.stderr)
        return 2
    from ray.util.spark import setup_ray_cluster, shutdown_ray_cluster

    import distml
    from distml.errors import DistmlError

    SparkSession.builder.appName("distml").getOrCreate()  # setup_ray_cluster uses it
    setup_ray_cluster(max_worker_nodes=args.max_worker_nodes,
                      num_cpus_worker_node=args.cpus_per_node,
                      num_gpus_worker_node=args.gpus_per_node)
    try:
        result = distml.run(args.spec, args.overrides, output=args.output, run_id=args.run_id)
    except DistmlError as e:
        print(json.dumps({"status": "failed", "error": e.to_dict()}))
        return e.exit_code
    finally:
        shutdown_ray_cluster()  # the Spark session is left as it was (shared on Databricks)
    print(json.dumps(result.to_dict(), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
