"""The error types distml raises, each tied to one CLI exit code (DESIGN.md §3).

Every message is one sentence in the shape of CONVENTIONS.md §5: what (field path, file or
column), the rule, the value received, and a fix where there is one.
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class DistmlError(Exception):
    """Base of every error distml raises on purpose; ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init_subclass__(cls, **kwargs):
        # Ray re-raises a worker's exception as a class deriving from both RayTaskError and the
        # worker's class, whose str() is the worker traceback (with ANSI colour codes). Such a
        # class is still a DistmlError (the CLI maps it to the right exit code); make it read as
        # the worker's one sentence wherever it is printed or recorded.
        super().__init_subclass__(**kwargs)
        if any(b.__name__ == "RayTaskError" for b in cls.__mro__):
            cls.__str__ = _wrapped_str  # type: ignore[method-assign]
            cls.to_dict = _wrapped_to_dict  # type: ignore[method-assign]

    def __init__(self, message: str, *, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = list(details or [])

    def __str__(self) -> str:
        if not self.details:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {d}" for d in self.details)

    def to_dict(self) -> dict:
        return {
            "type": type(self).__name__,
            "message": self.message,
            "details": self.details,
            "exit_code": self.exit_code,
        }


def _wrapped_str(self) -> str:
    cause = self.__dict__.get("cause")
    return str(cause) if isinstance(cause, DistmlError) else strip_ansi(Exception.__str__(self))


def _wrapped_to_dict(self) -> dict:
    cause = self.__dict__.get("cause")
    return cause.to_dict() if isinstance(cause, DistmlError) else DistmlError.to_dict(self)


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes."""
    return _ANSI.sub("", text)


def distml_cause(e: BaseException | None) -> DistmlError | None:
    """The distml error behind ``e``, through Ray's wrappers (``RayTaskError.cause``, dual
    classes) and ``__cause__``/``__context__`` chains; None when there is none."""
    seen: set[int] = set()
    stack = [e]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        inner = cur.__dict__.get("cause") if hasattr(cur, "__dict__") else None
        if isinstance(cur, DistmlError) and not isinstance(inner, BaseException):
            return cur
        stack += [cur.__context__, cur.__cause__, inner]
    return None


def one_line(e: BaseException, limit: int = 300) -> str:
    """One line for ``e``: a distml error's own sentence, else the last non-empty line of its
    text (a traceback's last line is the error), without ANSI codes, at most ``limit`` chars."""
    cause = distml_cause(e)
    if cause is not None:
        return cause.message
    lines = [ln.strip() for ln in strip_ansi(str(e)).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:limit]


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``e``'s text (an error whose first line is the sentence, such
    as Ray's connection errors), at most ``limit`` chars; the type name when it has no text."""
    lines = [ln for ln in strip_ansi(str(e)).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:limit]


def error_text(e: BaseException, limit: int = 500) -> str:
    """``Type: first meaningful line`` of a task's or trial's error, for tables and messages:
    the cause behind a Ray wrapper, no traceback, ``File``, ``ray::`` or caret lines."""
    cause = getattr(e, "cause", None) or e
    text = strip_ansi(str(cause)).strip() or type(cause).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = next(
        (
            ln
            for ln in lines
            if any(ch.isalnum() for ch in ln) and not ln.startswith(("Traceback", "File ", "ray::"))
        ),
        lines[0] if lines else text,
    )
    return f"{type(cause).__name__}: {first}"[:limit]


def plain(e: BaseException) -> BaseException:
    """``e`` as the user should see it: the distml error behind a Ray wrapper, else ``e``."""
    cause = distml_cause(e)
    return cause if cause is not None else e


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
        return cls(
            f"{purpose} needs the '{package}' package, which is not installed; "
            f'install it with: pip install "distml[{extra}]"'
        )
