"""The job spec: typed sections, loading, overrides and the JSON schema."""

from distml.spec.base import DataSpec, JobSpec, OutputSpec, ResourcesSpec, SplitSpec, StrictModel
from distml.spec.load import apply_overrides, json_schema, load_spec, parse_override

__all__ = [
    "DataSpec",
    "JobSpec",
    "OutputSpec",
    "ResourcesSpec",
    "SplitSpec",
    "StrictModel",
    "apply_overrides",
    "json_schema",
    "load_spec",
    "parse_override",
]
