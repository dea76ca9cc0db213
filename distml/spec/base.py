"""Sections shared by every job kind: data, split, resources, output, and the ``JobSpec`` base.

Each job kind subclasses :class:`JobSpec` in its own module under ``distml/jobs/`` with a
``kind: Literal[...]`` tag and a typed ``model`` section; :mod:`distml.spec.load` assembles the
tagged union from the registry.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from distml.spec.tune import TuneSpec

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME_RE = re.compile(NAME_PATTERN)
#: The same rule for JSON schema users (ECMA-262 regex: the lookahead forbids '..').
NAME_SCHEMA_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
#: Seeds go to numpy/scikit-learn ``random_state``, which takes 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1


def check_name(value: str, field: str) -> str:
    """Validate a run name or run id: ``[A-Za-z0-9._-]{1,128}``, not starting with '.', no '..'.

    >>> check_name("churn-xgb.v2", "name")
    'churn-xgb.v2'
    """
    # fullmatch, not match: ``$`` also matches before a trailing newline ("a\n" is no name).
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or ".." in value:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:76] + "...'"
        raise ValueError(
            f"{field} must be 1 to 128 letters, digits, '.', '_' or '-', start with a letter or "
            f"digit and contain no '..'; got {shown}"
        )
    return value


class StrictModel(BaseModel):
    """Base of every spec section: unknown keys are errors, values are validated on assignment.

    NaN and infinity are not numbers a spec can mean (``cpus_per_worker: .nan``); they are
    rejected. (``true`` for a number field is rejected by :func:`distml.spec.load_spec`.)
    """

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        protected_namespaces=(),
        allow_inf_nan=False,
        ser_json_inf_nan="constants",
    )


class SplitSpec(StrictModel):
    """How rows are divided into train/valid/test, or into cross-validation folds."""

    valid: float = Field(0.2, ge=0, lt=1, description="Fraction of rows held out for validation.")
    test: float = Field(
        0.0, ge=0, lt=1, description="Fraction of rows held out for the test split."
    )
    stratify: bool | None = Field(
        None, description="Stratify on the target; default: yes for classification, no otherwise."
    )
    # The upper bound is checked by a validator (not ``le=``) so the generated field reference
    # stays as it is; the JSON schema carries it as ``maximum``.
    seed: int = Field(
        42, ge=0, description="Seed of the row shuffle.", json_schema_extra={"maximum": MAX_SEED}
    )
    cv: int | None = Field(
        None,
        ge=2,
        le=100,
        description="Number of cross-validation folds, fitted in parallel; replaces `valid`.",
    )

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if v > MAX_SEED:
            raise ValueError(
                f"must be <= {MAX_SEED} (numpy/scikit-learn seeds are 32-bit); got {v}"
            )
        return v

    @model_validator(mode="after")
    def _fractions(self) -> "SplitSpec":
        if self.cv is not None and "valid" in self.model_fields_set and self.valid > 0:
            raise ValueError(
                "data.split.cv and data.split.valid conflict: cross-validation makes its "
                f"own validation folds; got cv={self.cv} and valid={self.valid}; drop valid"
            )
        if self.cv is not None:
            object.__setattr__(self, "valid", 0.0)
        if self.valid + self.test >= 1:
            raise ValueError(
                f"data.split.valid + data.split.test must be < 1 (some rows must "
                f"be left to train on); got {self.valid} + {self.test}; lower one "
                "of them"
            )
        return self


class DataSpec(StrictModel):
    """Where the rows come from and which columns play which part."""

    source: str = Field(
        ...,
        min_length=1,
        description="Path, glob, directory, fsspec URL (.parquet or .csv), builtin:NAME or "
        "synthetic:KIND?rows=..&features=..&seed=..",
    )
    test_source: str | None = Field(None, description="Separate held-out file(s) for test metrics.")
    target: str | None = Field(None, description="Target column (required by supervised kinds).")
    features: list[str] | None = Field(
        None, description="Feature columns; default: every column but target, group and exclude."
    )
    exclude: list[str] = Field(default_factory=list, description="Columns never used as features.")
    categorical: list[str] | None = Field(
        None, description="Columns treated as categorical; default: string/category/bool dtypes."
    )
    split: SplitSpec | Literal["none"] = Field(
        default_factory=SplitSpec, description="Row split, or 'none' to train on every row."
    )

    @field_validator("features", "exclude", "categorical")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            dup = sorted({c for c in v if v.count(c) > 1})
            if dup:
                raise ValueError(f"must list each column once; got duplicates {dup}")
        return v

    @property
    def split_spec(self) -> SplitSpec | None:
        """The split, or None for ``split: none``."""
        return None if self.split == "none" else self.split


class ResourcesSpec(StrictModel):
    """What the job asks of the cluster."""

    num_workers: int = Field(1, ge=1, le=4096, description="Workers (Ray tasks / Train workers).")
    cpus_per_worker: float = Field(1, gt=0, le=1024, description="CPUs reserved per worker.")
    gpus_per_worker: float = Field(0, ge=0, le=64, description="GPUs reserved per worker.")
    max_failures: int = Field(0, ge=0, le=100, description="Worker restarts allowed per run.")


class OutputSpec(StrictModel):
    """Where the run directory goes."""

    dir: str = Field("runs", min_length=1, description="Output root; runs land in DIR/NAME/RUN_ID.")

    @field_validator("dir")
    @classmethod
    def _dir(cls, v: str) -> str:
        return check_output_dir(v, "output.dir")


def check_output_dir(path: "str | os.PathLike", field: str = "--output") -> str:
    """An output root must be a local folder (or a path where one can be made).

    A URL (``s3://…``) would become a local folder named ``s3:`` and a file in the way fails
    deep in the run, so both are refused here; the message starts with ``field``.
    """
    text = os.fspath(path)
    if "://" in text:
        raise ValueError(
            f"{field} must be a local path (the run directory is written with local "
            f"file operations); got {text!r}; write locally and copy the run "
            "directory to object storage afterwards"
        )
    p = os.path.abspath(os.path.expanduser(text))
    while p and not os.path.exists(p):  # the nearest existing folder must be a folder
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    if os.path.exists(p) and not os.path.isdir(p):
        raise ValueError(
            f"{field}: {p!r} is an existing file, not a folder; choose another "
            f"output folder (got {text!r})"
        )
    return text


class MlflowSpec(StrictModel):
    """Where an MLflow tracking server (or file store) records finished runs."""

    uri: str = Field(
        ...,
        min_length=1,
        description="MLflow tracking URI: http(s)://HOST, databricks, or file:///shared/mlruns.",
    )
    experiment: str = Field("distml", min_length=1, description="MLflow experiment name.")
    run_name: str | None = Field(None, description="MLflow run name (default NAME/RUN_ID).")
    log_artifacts: bool = Field(True, description="Upload the run directory as artifacts.")


class TrackingSpec(StrictModel):
    """Optional experiment tracking of finished runs."""

    mlflow: MlflowSpec | None = Field(
        None, description="Log params, metrics and artifacts to MLflow (needs distml[tracking])."
    )


class JobSpec(StrictModel):
    """Fields every job kind has. Subclasses set ``kind`` to a Literal and add ``model``."""

    name: str = Field(
        ...,
        description="Run name, [A-Za-z0-9._-]{1,128}; names the run directory.",
        json_schema_extra={"pattern": NAME_SCHEMA_PATTERN, "maxLength": 128},
    )
    kind: str = Field(..., description="Job kind.")
    data: DataSpec
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    tracking: TrackingSpec | None = Field(
        None, description="Experiment tracking (MLflow) of the finished run."
    )
    tune: TuneSpec | None = Field(
        None, description="Hyperparameter search over spec paths (see docs/tuning.md)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "name")

    @model_validator(mode="after")
    def _tune(self) -> "JobSpec":
        if self.tune is not None:
            from distml.spec.tune import check_job

            check_job(self)  # search paths, metric split, scheduler vs kind
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (what ``spec.yaml`` holds)."""
        return self.model_dump(mode="json")
