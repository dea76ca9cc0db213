"""Loading a spec from YAML, a dict or a path; ``--set`` overrides; errors in one sentence shape."""

from __future__ import annotations

import functools
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import TypeAdapter, ValidationError

from distml.errors import SpecError
from distml.spec.base import JobSpec
from distml.spec.messages import (  # noqa: F401 - error_messages, format_error: imported from here too
    dotted,
    error_messages,
    format_error,
    models_in,
    show,
    type_word,
)
from distml.spec.yamlio import AliasError, load_yaml


@functools.cache
def _adapter() -> TypeAdapter:
    from pydantic import Field

    from distml.registry import spec_classes

    classes = tuple(spec_classes())
    union = classes[0] if len(classes) == 1 else typing.Union[classes]  # type: ignore[valid-type]
    return TypeAdapter(typing.Annotated[union, Field(discriminator="kind")])


@functools.cache
def _kind_adapter(spec_cls: type) -> TypeAdapter:
    """The validator of one kind's spec: a run or ``validate`` imports only its own kind (the
    union of every kind, :func:`_adapter`, imports them all; the schema needs it, loading not).
    :func:`_load` puts the union's leading kind tag back on its error locations."""
    return TypeAdapter(spec_cls)


def json_schema() -> dict:
    """JSON schema of the whole spec (every kind), for editors and CI linting.

    >>> json_schema()["title"]
    'distml job spec'
    """
    schema = _adapter().json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "distml job spec"
    return schema


def _yaml_problem(e: BaseException) -> str:
    """The short reason a YAML text could not be read (no multi-line PyYAML context)."""
    if isinstance(e, RecursionError):
        return "it is nested too deeply"
    if isinstance(e, yaml.YAMLError):
        return str(getattr(e, "problem", None) or str(e).splitlines()[0]).strip()
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "integer string conversion" in msg:  # a number with thousands of digits
        return "a number has too many digits"
    return msg


def read_spec_file(path: str | os.PathLike) -> dict:
    """Read a YAML/JSON spec file into a dict; a missing or malformed file is a SpecError."""
    try:
        p = Path(path)
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SpecError(f"spec file {str(path)!r} does not exist") from None
    except OSError as e:
        raise SpecError(f"spec file {str(path)!r} cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SpecError(
            f"spec file {str(path)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8 YAML"
        ) from None
    except (ValueError, TypeError):  # an embedded NUL byte, a non-path object
        raise SpecError(f"spec file path {show(path)} is not a valid path") from None
    try:
        raw = load_yaml(text)
    except AliasError as e:  # refused before it is expanded (a few bytes can mean billions)
        raise SpecError(
            f"{str(p)} line {e.line}: YAML aliases (*{e.name}) are not allowed in "
            "a spec; write the value out in full"
        ) from None
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        # ValueError: a scalar PyYAML parses but Python refuses (2024-02-30, a 5000-digit int).
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # Where the broken construct began (an unclosed '[' is reported where parsing stopped).
        context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
        started = ""
        if context and cmark and (not mark or cmark.line != mark.line):
            what = re.sub(r"^while (parsing|scanning|constructing) ", "", str(context))
            started = (
                f" (in {what} that starts at line {cmark.line + 1}, column {cmark.column + 1})"
            )
        raise SpecError(
            f"spec file {str(p)!r} is not valid YAML{where}: {_yaml_problem(e)}{started}"
        ) from None
    if raw is None:
        raise SpecError(
            f"spec file {str(p)!r} is empty; it must hold a mapping with name, kind and data"
        )
    if not isinstance(raw, dict):
        raise SpecError(
            f"spec file {str(p)!r} must hold a mapping at the top level; got {type_word(raw)}"
        )
    return raw


def overrides_dict(overrides: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """Overrides as one mapping of dotted paths: a mapping as it is, ``--set`` strings parsed
    (:func:`parse_override`).

    >>> overrides_dict(["model.params.max_depth=8", "seed=1"])
    {'model.params.max_depth': 8, 'seed': 1}
    >>> overrides_dict("model.lr=0.1")
    {'model.lr': 0.1}
    """
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    if isinstance(overrides, str):  # one "a.b=c", as apply_overrides takes it
        overrides = [overrides]
    return dict(parse_override(s) for s in overrides)


def parse_override(item: str) -> tuple[str, Any]:
    """Parse ``a.b.c=value``; the value is read as a YAML scalar/list (``8`` → int, ``[1,2]``).

    >>> parse_override("model.params.max_depth=8")
    ('model.params.max_depth', 8)
    """
    if not isinstance(item, str) or "=" not in item:
        raise SpecError(
            f"--set expects PATH=VALUE (e.g. model.params.max_depth=8); got {show(item)}"
        )
    path, _, text = item.partition("=")
    path = path.strip()
    if not path or any(not part for part in path.split(".")):
        raise SpecError(f"--set path must be dotted field names (e.g. model.lr); got {path!r}")
    try:
        value = load_yaml(text) if text.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):
        # not YAML (e.g. "a: b: c"), or an alias (never expanded): keep the text as a string
        value = text
    return path, value


def _copy_tree(value: Any) -> Any:
    """Copy the dict/list spine of a spec (leaves are shared, so any object is accepted)."""
    if isinstance(value, Mapping):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    return value


def apply_overrides(raw: dict, overrides: Mapping[str, Any] | Iterable[str] | None) -> dict:
    """Return a copy of ``raw`` with dotted-path overrides applied (``a__b`` also means ``a.b``).

    Missing sections on the way are created; a path through a non-section value is a SpecError.

    >>> apply_overrides({"model": {}}, ["model.params.max_depth=8", "data__split=none"])
    {'model': {'params': {'max_depth': 8}}, 'data': {'split': 'none'}}
    """
    out = _copy_tree(raw)
    if not overrides:
        return out
    if isinstance(overrides, str):  # one "a.b=c", not an iterable of characters
        overrides = [overrides]
    items = (
        overrides.items()
        if isinstance(overrides, Mapping)
        else (parse_override(s) for s in overrides)
    )
    for path, value in items:
        if not isinstance(path, str):
            raise SpecError(
                f"an override path must be a dotted string (e.g. model.lr); got {show(path)}"
            )
        parts = path.replace("__", ".").split(".")
        if any(not part for part in parts):
            raise SpecError(
                f"an override path must be dotted field names (e.g. model.lr); got {path!r}"
            )
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                where = ".".join(parts[: i + 1])
                raise SpecError(
                    f"--set {path}: {where} is {type_word(nxt)}, not a section, "
                    f"so it has no field {parts[i + 1]!r}; got {where}={show(nxt)}"
                )
            node = nxt
        node[parts[-1]] = value
    return out


def load_spec(
    spec: "str | os.PathLike | Mapping | JobSpec",
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
) -> JobSpec:
    """Load and validate a spec from a YAML path, a dict or a JobSpec, applying overrides.

    Every problem is a :class:`distml.errors.SpecError` whose message names the field path, the
    rule and the value received (one sentence per problem in ``details`` when there are several).

    >>> s = load_spec({"name": "q", "kind": "xgboost", "data": {"source": "builtin:iris",
    ...                "target": "target"}}, {"model.num_boost_round": 5})
    >>> s.model.num_boost_round
    5
    """
    try:
        return _load(spec, overrides)
    except RecursionError:
        raise SpecError("the spec is nested too deeply to validate (or refers to itself)") from None


def _load(spec: Any, overrides: Any) -> JobSpec:
    if isinstance(spec, JobSpec):
        raw = spec.to_dict()
    elif isinstance(spec, Mapping):
        raw = dict(spec)
    elif isinstance(spec, (str, os.PathLike)):
        raw = read_spec_file(spec)
    else:
        raise SpecError(f"a spec must be a path, a mapping or a JobSpec; got {type_word(spec)}")
    raw = apply_overrides(raw, overrides)
    from distml.registry import KINDS, kind_module

    kind = raw.get("kind")
    if kind is None:
        raise SpecError(f"kind is required; set it to one of {', '.join(sorted(KINDS))}")
    if not isinstance(kind, str):
        raise SpecError(
            f"kind must be a string, one of {', '.join(sorted(KINDS))}; got {show(kind)}"
        )
    if kind not in KINDS and kind.strip().lower() in KINDS:  # "XGBoost", "xgboost "
        raise SpecError(
            f"kind must be one of {', '.join(sorted(KINDS))}; got {kind!r}; "
            f"did you mean {kind.strip().lower()!r}?"
        )
    spec_cls = kind_module(kind).Spec  # unknown kind: one clear sentence with did-you-mean
    # pydantic's lax mode reads true as 1; in a spec that is a mistake, not a number.
    bools = dict(_bool_numbers(spec_cls, raw, ()))
    # An int past 64 bits fits no backend, and past 4300 digits Python cannot even write it
    # into spec.yaml; reported where pydantic has nothing more specific to say.
    huge = dict(_huge_ints(raw, ()))
    try:
        result = _kind_adapter(spec_cls).validate_python(raw)
        errors: list = []
    except ValidationError as e:  # located as the union of kinds locates them: kind first
        errors = [{**err, "loc": (kind, *err.get("loc", ()))} for err in e.errors()]
    if errors or bools or huge:
        messages = error_messages(errors, raw, bools, huge)
        head = messages[0] if len(messages) == 1 else f"the spec has {len(messages)} problems"
        raise SpecError(head, details=messages if len(messages) > 1 else None)
    return result


def _plain_type(annotation: Any) -> Any:
    """``int`` for ``int``, ``int | None`` and ``Annotated[int, ...]``; ``float`` for
    ``float | int`` and the like; else the annotation."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = {_plain_type(a) for a in typing.get_args(annotation) if a is not type(None)}
        if len(args) == 1:
            return args.pop()
        if args == {int, float}:
            return float
    return annotation


_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _huge_ints(node: Any, path: tuple) -> Iterable[tuple[tuple, str]]:
    """(path, message) for each integer outside [-2**63, 2**64 - 1], anywhere in the spec."""
    if isinstance(node, Mapping):
        items: Iterable = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        if (
            isinstance(node, int)
            and not isinstance(node, bool)
            and not _INT_MIN <= node <= _INT_MAX
        ):
            yield (
                path,
                (f"{dotted(list(path))} must be an integer that fits in 64 bits; got {show(node)}"),
            )
        return
    for k, v in items:
        yield from _huge_ints(v, path + (k,))


def _bool_numbers(model: type, node: Any, path: tuple) -> Iterable[tuple[tuple, str]]:
    """(path, message) for each true/false given to an int or float field of ``model``."""
    if not isinstance(node, Mapping):
        return
    for name, field in model.model_fields.items():
        if name not in node:
            continue
        value, here = node[name], path + (name,)
        t = _plain_type(field.annotation)
        if isinstance(value, bool) and t in (int, float):
            what = "an integer" if t is int else "a number"
            yield here, f"{dotted(list(here))} must be {what}, not true/false; got {value!r}"
            continue
        sub = next(iter(models_in(field.annotation)), None)
        if sub is None:
            continue
        if isinstance(value, Mapping):
            yield from _bool_numbers(sub, value, here)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from _bool_numbers(sub, item, here + (i,))
