"""An Airflow DAG that trains with distml every night, two ways (docs/batch_platforms.md).

* ``train_on_ray`` — a BashOperator running ``distml submit --wait``: the Airflow worker needs
  only the distml CLI and the cluster's Jobs API (``http://HEAD:8265``) and token; the job runs
  on the Ray cluster; the exit code is the task's result. The submission id is the run date, so
  a task re-run after its worker died reports (and waits for) the job already submitted instead
  of starting a second one.
* ``train_in_process`` — a PythonOperator calling :func:`distml.run`: the Airflow worker is the
  Ray driver (a local single-node Ray, or the cluster in ``RAY_ADDRESS``, a GCS address). Input
  errors fail the task without retries; an unreachable cluster is retried.

Copy this file into your DAGs folder and set DISTML_SPEC, DISTML_ADDRESS, DISTML_OUTPUT (shared
storage) and RAY_AUTH_TOKEN (an Airflow connection or secret backend) for the workers.
The module imports without Airflow (the DAG is then ``None``), so its callables can be tested.
"""

from __future__ import annotations

import os
import shlex
from datetime import datetime, timedelta
from typing import Any

SPEC = os.environ.get("DISTML_SPEC", "/opt/distml/jobs/quickstart.yaml")
ADDRESS = os.environ.get("DISTML_ADDRESS", "http://ray-head:8265")
OUTPUT = os.environ.get("DISTML_OUTPUT", "/mnt/distml/runs")
#: Airflow renders this per run: one submission id / run id per logical date
RUN_ID = "nightly-{{ds}}"


def submit_command(spec: str = SPEC, address: str = ADDRESS, output: str = OUTPUT,
                   run_id: str = RUN_ID) -> str:
    """The BashOperator command: submit, stream the log, exit 0 / 2 / 3 / 4."""
    argv = ["distml", "submit", spec, "--address", address, "--submission-id", run_id,
            "--output", output, "--wait", "--json"]
    # The Jinja run id must stay unquoted text for Airflow to render it; it renders to a valid
    # id ([A-Za-z0-9._-]), every other argument is shell-quoted.
    return " ".join(a if a == run_id else shlex.quote(a) for a in argv)


def train_in_process(run_id: str, spec: str = SPEC, output: str = OUTPUT,
                     **overrides: Any) -> dict:
    """PythonOperator callable: run the spec here; the return value goes to XCom."""
    import distml
    from distml.errors import ClusterError, DistmlError

    try:
        result = distml.run(spec, output=output, run_id=run_id, **overrides)
    except ClusterError:
        raise  # the cluster may be back later: let Airflow retry
    except DistmlError as e:  # invalid input (2) or a failed fit (4): retrying cannot help
        try:
            from airflow.exceptions import AirflowFailException
        except ImportError:
            raise e from None
        raise AirflowFailException(f"distml exit {e.exit_code}: {e}") from e
    return {"run_dir": str(result.run_dir), "run_id": result.run_id,
            "metrics": result.metrics, "reused": result.reused}


try:
    from airflow import DAG

    try:  # Airflow 3
        from airflow.providers.standard.operators.bash import BashOperator
        from airflow.providers.standard.operators.python import PythonOperator
    except ImportError:  # Airflow 2
        from airflow.operators.bash import BashOperator
        from airflow.operators.python import PythonOperator
except ImportError:  # Airflow is not installed here: the callables above stay importable
    DAG = None

dag = None
if DAG is not None:
    with DAG(
        dag_id="distml_nightly",
        schedule="15 2 * * *",
        start_date=datetime(2026, 1, 1),
        catchup=False,
        default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
        tags=["distml"],
    ) as dag:
        # Two independent tasks, one per way; keep the one that fits your deployment.
        BashOperator(task_id="train_on_ray", bash_command=submit_command(),
                     execution_timeout=timedelta(hours=6))
        PythonOperator(task_id="train_in_process", python_callable=train_in_process,
                       op_kwargs={"run_id": RUN_ID + "-local"})
