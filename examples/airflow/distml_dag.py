"""An Airflow DAG that trains with distml every night, two ways (docs/batch_platforms.md).

* ``train_on_ray`` — runs ``distml submit --wait --json`` (no shell): the Airflow worker needs
  only the distml CLI and the cluster's Jobs API (``http://HEAD:8265``) and token; the job runs
  on the Ray cluster; the submission id is the run date, so a task re-run after its worker died
  reports (and waits for) the job already submitted instead of starting a second one.
* ``train_in_process`` — calls :func:`distml.run`: the Airflow worker is the Ray driver (a local
  single-node Ray, or the cluster in ``RAY_ADDRESS``, a GCS address).

Retry policy, from distml's exit codes (the job's own code survives ``submit --wait``):
2 (invalid spec or data) and 4 (the fit failed) fail the task at once without retries
(``AirflowFailException``); 3 (cluster unreachable or refused) and 130 (interrupted) are
retried (``retries`` below); anything else is a plain failure, retried.

Copy this file into your DAGs folder and set DISTML_SPEC, DISTML_ADDRESS, DISTML_OUTPUT (shared
storage) and RAY_AUTH_TOKEN (an Airflow connection or secret backend) for the workers.
The module imports without Airflow (the DAG is then ``None``), so its callables can be tested.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from typing import Any, Mapping

SPEC = os.environ.get("DISTML_SPEC", "/opt/distml/jobs/quickstart.yaml")
ADDRESS = os.environ.get("DISTML_ADDRESS", "http://ray-head:8265")
OUTPUT = os.environ.get("DISTML_OUTPUT", "/mnt/distml/runs")
#: Airflow renders this per run: one submission id / run id per logical date
RUN_ID = "nightly-{{ds}}"
#: distml exit codes that retrying cannot fix: invalid input, a fit that failed
NO_RETRY = (2, 4)


def submit_argv(
    run_id: str, spec: str = SPEC, address: str = ADDRESS, output: str = OUTPUT
) -> list[str]:
    """``distml submit --wait --json`` for one run id (an argument list: no shell)."""
    distml = shutil.which("distml") or os.path.join(os.path.dirname(sys.executable), "distml")
    return [
        distml,
        "submit",
        spec,
        "--address",
        address,
        "--submission-id",
        run_id,
        "--output",
        output,
        "--wait",
        "--json",
    ]


def submit_command(
    spec: str = SPEC, address: str = ADDRESS, output: str = OUTPUT, run_id: str = RUN_ID
) -> str:
    """The same as one shell line, for a BashOperator or cron (exit 0 / 2 / 3 / 4 / 130)."""
    argv = ["distml", *submit_argv(run_id, spec, address, output)[1:]]
    # The Jinja run id must stay unquoted text for Airflow to render it; it renders to a valid
    # id ([A-Za-z0-9._-]), every other argument is shell-quoted.
    return " ".join(a if a == run_id else shlex.quote(a) for a in argv)


class DistmlExit(RuntimeError):
    """``distml`` exited non-zero; ``exit_code`` says why (a plain failure: Airflow retries)."""

    def __init__(self, exit_code: int, message: str):
        super().__init__(f"distml exit {exit_code}: {message}")
        self.exit_code = exit_code


def _no_retry(code: int, message: str) -> Exception | None:
    """AirflowFailException (fail now, no retries) for exit 2 and 4; None for the codes Airflow
    should retry, or where Airflow is not installed (the callables are tested without it)."""
    if code not in NO_RETRY:
        return None
    try:  # Airflow 3: the Task SDK (airflow.exceptions' name for it is deprecated there)
        from airflow.sdk.exceptions import AirflowFailException
    except ImportError:
        try:  # Airflow 2
            from airflow.exceptions import AirflowFailException
        except ImportError:
            return None
    return AirflowFailException(f"distml exit {code} (not retried): {message}")


def train_on_ray(
    run_id: str, spec: str = SPEC, address: str = ADDRESS, output: str = OUTPUT
) -> dict:
    """Callable: submit to the Ray cluster and wait; the job's JSON result goes to XCom."""
    out = subprocess.run(
        submit_argv(run_id, spec, address, output), stdout=subprocess.PIPE, text=True
    )  # the job's log streams to the task log (stderr)
    try:
        payload = json.loads(out.stdout)
    except ValueError:
        payload = {}
    if out.returncode != 0:
        message = (payload.get("error") or {}).get("message") or "see the task log"
        raise _no_retry(out.returncode, message) or DistmlExit(out.returncode, message)
    return payload


def train_in_process(
    run_id: str, spec: str = SPEC, output: str = OUTPUT, overrides: Mapping[str, Any] | None = None
) -> dict:
    """Callable: run the spec here; the return value goes to XCom.

    Takes only what it names: Airflow 3 passes its task context (``dag``, ``ti``, ``ds``...)
    to a callable that accepts ``**kwargs``, and none of that is a spec override.
    """
    import distml
    from distml.errors import DistmlError

    try:
        result = distml.run(spec, dict(overrides or {}), output=output, run_id=run_id)
    except DistmlError as e:
        stop = _no_retry(e.exit_code, str(e))
        if stop is not None:
            raise stop from e
        raise  # 3: the cluster may be back later, let Airflow retry
    return {
        "run_dir": str(result.run_dir),
        "run_id": result.run_id,
        "metrics": result.metrics,
        "reused": result.reused,
    }


try:  # Airflow 3
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG
except ImportError:
    try:  # Airflow 2
        from airflow import DAG
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
        PythonOperator(
            task_id="train_on_ray",
            python_callable=train_on_ray,
            op_kwargs={"run_id": RUN_ID},
            execution_timeout=timedelta(hours=6),
        )
        PythonOperator(
            task_id="train_in_process",
            python_callable=train_in_process,
            op_kwargs={"run_id": RUN_ID + "-local"},
        )
