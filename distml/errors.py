"""The error types distml raises, each tied to one CLI exit code (DESIGN.md §3).

Every message is one sentence in the shape of CONVENTIONS.md §5: what (field path, file or
column), the rule, the value received, and a fix where there is one.
"""

from __future__ import annotations


class DistmlError(Exception):
    """Base of every error distml raises on purpose; ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, *, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = list(details or [])

    def __str__(self) -> str:
        if not self.details:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {d}" for d in self.details)

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "message": self.message, "details": self.details,
                "exit_code": self.exit_code}


class SpecError(DistmlError, ValueError):
    """The spec is invalid (exit 2). ``details`` holds one sentence per problem."""

    exit_code = 2


class DataError(DistmlError, ValueError):
    """The input data is unusable: missing/unreadable file, missing column, NaN target (exit 2)."""

    exit_code = 2


class ClusterError(DistmlError):
    """The cluster is unreachable or refused the work (exit 3)."""

    exit_code = 3


class JobFailed(DistmlError):
    """The job ran and failed: fit error, every group or trial failed (exit 4)."""

    exit_code = 4


class MissingDependency(DistmlError):
    """An optional backend is not installed; the message carries the install hint (exit 2)."""

    exit_code = 2

    @classmethod
    def for_extra(cls, package: str, extra: str, purpose: str) -> "MissingDependency":
        return cls(f"{purpose} needs the '{package}' package, which is not installed; "
                   f'install it with: pip install "distml[{extra}]"')
