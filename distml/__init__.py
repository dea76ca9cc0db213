"""distml: declarative modeling jobs — statistical inference and distributed ML — on Ray.

>>> import distml
>>> result = distml.run("jobs/quickstart.yaml")     # doctest: +SKIP
>>> result.metrics["valid"]["roc_auc"]              # doctest: +SKIP
"""

from distml.api import build_report, run, validate
from distml.errors import ClusterError, DataError, DistmlError, JobFailed, SpecError
from distml.remote import Submission, submit
from distml.report import list_runs
from distml.result import Result
from distml.scoring import Prediction, predict
from distml.spec import JobSpec, json_schema, load_spec

__version__ = "0.1.0"

__all__ = [
    "run",
    "validate",
    "submit",
    "predict",
    "build_report",
    "list_runs",
    "load_spec",
    "json_schema",
    "JobSpec",
    "Result",
    "Submission",
    "Prediction",
    "DistmlError",
    "SpecError",
    "DataError",
    "ClusterError",
    "JobFailed",
    "__version__",
]
