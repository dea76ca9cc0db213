"""Loading a spec from YAML, a dict or a path; ``--set`` overrides; errors in one sentence shape."""

from __future__ import annotations

import copy
import difflib
import functools
import os
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from distml.errors import SpecError
from distml.spec.base import JobSpec


@functools.cache
def _adapter() -> TypeAdapter:
    from pydantic import Field

    from distml.jobs import spec_classes

    classes = tuple(spec_classes())
    union = classes[0] if len(classes) == 1 else typing.Union[classes]  # type: ignore[valid-type]
    return TypeAdapter(typing.Annotated[union, Field(discriminator="kind")])


def json_schema() -> dict:
    """JSON schema of the whole spec (every kind), for editors and CI linting."""
    schema = _adapter().json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "distml job spec"
    return schema


def read_spec_file(path: str | os.PathLike) -> dict:
    """Read a YAML/JSON spec file into a dict; a missing or malformed file is a SpecError."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError(f"spec file {str(p)!r} does not exist") from None
    except OSError as e:
        raise SpecError(f"spec file {str(p)!r} cannot be read: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"spec file {str(p)!r} is not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {str(p)!r} must hold a mapping at the top level; "
                        f"got {type(raw).__name__}")
    return raw


def parse_override(item: str) -> tuple[str, Any]:
    """Parse ``a.b.c=value``; the value is read as a YAML scalar/list (``8`` → int, ``[1,2]``)."""
    if "=" not in item:
        raise SpecError(f"--set expects PATH=VALUE (e.g. model.params.max_depth=8); got {item!r}")
    path, _, text = item.partition("=")
    path = path.strip()
    if not path or any(not part for part in path.split(".")):
        raise SpecError(f"--set path must be dotted field names (e.g. model.lr); got {path!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return path, value


def apply_overrides(raw: dict, overrides: Mapping[str, Any] | Iterable[str] | None) -> dict:
    """Return a copy of ``raw`` with dotted-path overrides applied (``a__b`` also means ``a.b``)."""
    out = copy.deepcopy(raw)
    if not overrides:
        return out
    items = (overrides.items() if isinstance(overrides, Mapping)
             else (parse_override(s) for s in overrides))
    for path, value in items:
        parts = path.replace("__", ".").split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                where = ".".join(parts[: i + 1])
                raise SpecError(f"--set {path}: {where} is a {type(nxt).__name__}, not a section; "
                                f"got value {nxt!r} there")
            node = nxt
        node[parts[-1]] = value
    return out


def load_spec(spec: "str | os.PathLike | Mapping | JobSpec",
              overrides: Mapping[str, Any] | Iterable[str] | None = None) -> JobSpec:
    """Load and validate a spec from a YAML path, a dict or a JobSpec, applying overrides.

    >>> s = load_spec({"name": "q", "kind": "xgboost", "data": {"source": "builtin:iris",
    ...                "target": "target"}}, {"model.num_boost_round": 5})
    >>> s.model.num_boost_round
    5
    """
    if isinstance(spec, JobSpec):
        raw = spec.to_dict()
    elif isinstance(spec, Mapping):
        raw = dict(spec)
    elif isinstance(spec, (str, os.PathLike)):
        raw = read_spec_file(spec)
    else:
        raise SpecError(f"a spec must be a path, a mapping or a JobSpec; got {type(spec).__name__}")
    raw = apply_overrides(raw, overrides)
    kind = raw.get("kind")
    if kind is None:
        from distml.jobs import KINDS

        raise SpecError(f"kind is required: one of {', '.join(sorted(KINDS))}")
    if not isinstance(kind, str):
        raise SpecError(f"kind must be a string; got {kind!r}")
    from distml.jobs import kind_module

    kind_module(kind)  # unknown kind: one clear sentence with did-you-mean
    try:
        return _adapter().validate_python(raw)
    except ValidationError as e:
        messages = [format_error(err, raw) for err in e.errors()]
        head = messages[0] if len(messages) == 1 else f"the spec has {len(messages)} problems"
        raise SpecError(head, details=messages if len(messages) > 1 else None) from None


# ---------------------------------------------------------------- error sentences

_RULES = {
    "greater_than": "must be > {gt}", "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}", "less_than_equal": "must be <= {le}",
    "string_too_short": "must not be empty", "too_short": "must have at least {min_length} items",
    "too_long": "must have at most {max_length} items",
    "int_type": "must be an integer", "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number", "float_type": "must be a number",
    "float_parsing": "must be a number", "bool_type": "must be true or false",
    "bool_parsing": "must be true or false", "string_type": "must be a string",
    "list_type": "must be a list", "dict_type": "must be a mapping",
    "model_type": "must be a mapping", "model_attributes_type": "must be a mapping",
    "missing": "is required", "string_pattern_mismatch": "must match {pattern}",
}


def _loc_path(loc: tuple, raw: dict) -> list[str | int]:
    """Drop pydantic's union-tag and validator steps from an error location."""
    parts = list(loc)
    if parts and parts[0] == raw.get("kind"):
        parts = parts[1:]
    return [p for p in parts if not (isinstance(p, str) and (p.startswith("function-")
            or p in {"literal['none']", "str", "int", "float", "list[str]"}))]


def _dotted(parts: list) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "spec"


def _fields_at(parts: list, raw: dict) -> list[str]:
    """Known field names of the section at ``parts`` (for did-you-mean on unknown keys)."""
    from distml.jobs import kind_module

    try:
        model: Any = kind_module(raw.get("kind")).Spec
    except Exception:
        return []
    for p in parts:
        if isinstance(p, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(p)
        if field is None:
            return []
        model = next((a for a in _models_in(field.annotation)), None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _models_in(annotation: Any) -> Iterable[type]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def format_error(err: Mapping[str, Any], raw: dict) -> str:
    """One pydantic error → ``<path> <rule>; got <value>[; fix]``."""
    parts = _loc_path(tuple(err.get("loc", ())), raw)
    path = _dotted(parts)
    etype = err.get("type", "")
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if etype == "extra_forbidden":
        known = _fields_at(parts[:-1], raw)
        key = str(parts[-1]) if parts else "?"
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        where = _dotted(parts[:-1])
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listing = f" Known fields of {where}: {', '.join(known)}." if known else ""
        return f"{path} is not a known field{hint}{listing}"
    if etype == "missing":
        return f"{path} is required"
    if etype in ("literal_error", "enum"):
        return f"{path} must be {ctx.get('expected', 'one of the allowed values')}; got {value!r}"
    if etype == "value_error":
        # Validators write either a whole sentence starting with its field path, or a rule
        # ("must ...") that needs the path in front.
        msg = str(ctx.get("error", err.get("msg", "")))
        return f"{path} {msg}" if msg.startswith("must") else msg
    rule = _RULES.get(etype)
    if rule is not None:
        try:
            rule = rule.format(**ctx)
        except (KeyError, IndexError):
            pass
        if etype == "missing":
            return f"{path} {rule}"
        return f"{path} {rule}; got {value!r}"
    msg = err.get("msg", "is invalid")
    msg = msg[0].lower() + msg[1:] if msg else "is invalid"
    return f"{path}: {msg}; got {value!r}"
