"""Loading a spec from YAML, a dict or a path; ``--set`` overrides; errors in one sentence shape."""

from __future__ import annotations

import difflib
import functools
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from distml.errors import SpecError
from distml.spec.base import JobSpec
from distml.spec.yamlio import AliasError, load_yaml


@functools.cache
def _adapter() -> TypeAdapter:
    from pydantic import Field

    from distml.registry import spec_classes

    classes = tuple(spec_classes())
    union = classes[0] if len(classes) == 1 else typing.Union[classes]  # type: ignore[valid-type]
    return TypeAdapter(typing.Annotated[union, Field(discriminator="kind")])


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
        raise SpecError(f"spec file path {_show(path)} is not a valid path") from None
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
            f"spec file {str(p)!r} must hold a mapping at the top level; got {_type_word(raw)}"
        )
    return raw


def parse_override(item: str) -> tuple[str, Any]:
    """Parse ``a.b.c=value``; the value is read as a YAML scalar/list (``8`` → int, ``[1,2]``).

    >>> parse_override("model.params.max_depth=8")
    ('model.params.max_depth', 8)
    """
    if not isinstance(item, str) or "=" not in item:
        raise SpecError(
            f"--set expects PATH=VALUE (e.g. model.params.max_depth=8); got {_show(item)}"
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
                f"an override path must be a dotted string (e.g. model.lr); got {_show(path)}"
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
                    f"--set {path}: {where} is {_type_word(nxt)}, not a section, "
                    f"so it has no field {parts[i + 1]!r}; got {where}={_show(nxt)}"
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
        raise SpecError(f"a spec must be a path, a mapping or a JobSpec; got {_type_word(spec)}")
    raw = apply_overrides(raw, overrides)
    from distml.registry import KINDS, kind_module

    kind = raw.get("kind")
    if kind is None:
        raise SpecError(f"kind is required; set it to one of {', '.join(sorted(KINDS))}")
    if not isinstance(kind, str):
        raise SpecError(
            f"kind must be a string, one of {', '.join(sorted(KINDS))}; got {_show(kind)}"
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
        result = _adapter().validate_python(raw)
        errors: list = []
    except ValidationError as e:
        errors = e.errors()
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
                (
                    f"{_dotted(list(path))} must be an integer that fits in 64 bits; "
                    f"got {_show(node)}"
                ),
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
            yield here, f"{_dotted(list(here))} must be {what}, not true/false; got {value!r}"
            continue
        sub = next(iter(_models_in(field.annotation)), None)
        if sub is None:
            continue
        if isinstance(value, Mapping):
            yield from _bool_numbers(sub, value, here)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from _bool_numbers(sub, item, here + (i,))


# ---------------------------------------------------------------- error sentences

_RULES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "multiple_of": "must be a multiple of {multiple_of}",
    "finite_number": "must be a finite number",
    "too_short": "must have at least {min_length} items",
    "too_long": "must have at most {max_length} items",
    "string_too_long": "must have at most {max_length} characters",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_parsing_size": "must be an integer of reasonable size",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "string_unicode": "must be a valid unicode string",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "set_type": "must be a list",
    "frozen_set_type": "must be a list",
    "iterable_type": "must be a list",
    "dict_type": "must be a mapping",
    "mapping_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dataclass_type": "must be a mapping",
    "none_required": "must be null",
    "missing": "is required",
    "string_pattern_mismatch": "must match {pattern}",
    "union_tag_invalid": "must have {discriminator} one of {expected_tags}",
    "union_tag_not_found": "must have a {discriminator} field",
}
#: "the value has the wrong type" errors: in a union, each branch reports one at the same path.
_TYPE_ERRORS = frozenset(
    {"literal_error", "enum", "none_required", "is_instance_of", "int_from_float"}
    | {k for k in _RULES if k.endswith(("_type", "_parsing"))}
)
#: Steps pydantic adds to an error location for union members and validators (not fields).
_TAG_RE = re.compile(
    r"^(function-|literal\[|nullable\[|lax-|strict-|json-|constrained-|"
    r"typed-dict|tagged-union|default)|[\[\](), ]"
)
_TYPE_TAGS = frozenset(
    {
        "str",
        "int",
        "float",
        "bool",
        "bytes",
        "none",
        "any",
        "list",
        "dict",
        "tuple",
        "set",
        "frozenset",
        "decimal",
        "date",
        "datetime",
        "time",
        "timedelta",
        "uuid",
        "url",
        "json",
        "callable",
        "is-instance",
    }
)
_MISSING = object()


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, shortened; never fails (huge ints have no repr past 4300 digits)."""
    try:
        text = repr(value)
    except Exception:  # ValueError for ints with too many digits, or a broken __repr__
        if isinstance(value, int):
            return f"an integer of about {int(abs(value).bit_length() * 0.30103)} digits"
        return _type_word(value)
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_word(value: Any) -> str:
    """'a string', 'a list', 'null' ... for messages."""
    if value is None:
        return "null"
    for types_, word in (
        (bool, "a boolean"),
        (Mapping, "a mapping"),
        ((list, tuple), "a list"),
        (str, "a string"),
        ((int, float), "a number"),
    ):
        if isinstance(value, types_):
            return word
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name} object"


def _num(x: Any) -> Any:
    """1.0 → 1 in rule texts ("must be < 1"), other values unchanged."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e16:
        return int(x)
    return x


def _is_tag(step: Any) -> bool:
    if not isinstance(step, str):
        return False
    return bool(_TAG_RE.search(step)) or step in _TYPE_TAGS or step[:1].isupper()


def _loc_path(loc: tuple, raw: dict) -> tuple[list, bool]:
    """The field path of an error location, and whether the error is about a mapping key.

    Walks ``raw`` along ``loc``: a step present in the input is a field (or index); a step that
    is not and looks like a union member or validator name (``function-after[...]``,
    ``literal['none']``, ``SplitSpec``, ``list[str]``) is dropped. The leading kind tag is dropped.
    """
    steps = list(loc)
    if steps and steps[0] == raw.get("kind"):
        steps = steps[1:]
    out: list = []
    node: Any = raw
    key_error = False
    for step in steps:
        if step == "[key]":
            key_error = True
            continue
        if isinstance(node, Mapping) and not isinstance(step, bool):
            try:
                present = step in node
            except TypeError:
                present = False
            if present:
                out.append(step)
                node = node[step]
                continue
        if (
            isinstance(node, (list, tuple))
            and isinstance(step, int)
            and not isinstance(step, bool)
            and 0 <= step < len(node)
        ):
            out.append(step)
            node = node[step]
            continue
        if _is_tag(step):
            continue
        out.append(step)  # a field not in the input: a missing one, or one a validator added
        node = _MISSING
    return out, key_error


def _plain_key(key: Any) -> bool:
    """A key that reads unambiguously after a dot (not '', 'a.b', 'a b', '\\n', ...)."""
    return (
        isinstance(key, str)
        and key.isprintable()
        and not any(c in key for c in ".[]'\" \t")
        and bool(key)
    )


def _dotted(parts: list) -> str:
    """``data.split.valid``, ``data.features[0]``; odd keys as ``data['a b']``."""
    out = ""
    for p in parts:
        if _plain_key(p):
            out += f".{p}" if out else p
        elif isinstance(p, int) and not isinstance(p, bool):
            out += f"[{p}]"
        else:
            out += f"[{_show(p, 40)}]"
    return out or "the spec"


def _fields_at(parts: list, raw: dict) -> list[str]:
    """Known field names of the section at ``parts`` (for did-you-mean on unknown keys)."""
    from distml.registry import kind_module

    try:
        model: Any = kind_module(raw.get("kind")).Spec
    except Exception:
        return []
    for p in parts:
        if isinstance(p, int):  # a list item: the item model is already the current one
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
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


def _close_match(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` most likely misspells, ignoring case (``SOURCE`` → ``source``)."""
    lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.strip().lower(), list(lower), n=1, cutoff=0.6)
    return lower[close[0]] if close else None


def _rule(err: Mapping[str, Any]) -> str:
    """The rule an error breaks, as a phrase that follows the field path ("must be < 1")."""
    etype = err.get("type", "")
    ctx = {k: _num(v) for k, v in (err.get("ctx") or {}).items()}
    if etype in ("literal_error", "enum"):
        return f"must be {ctx.get('expected', 'one of the allowed values')}"
    if etype == "string_too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"must have at least {n} characters"
    rule = _RULES.get(etype)
    if rule is not None:
        try:
            return rule.format(**ctx)
        except (KeyError, IndexError, ValueError):
            return rule.split(" {")[0]
    msg = str(err.get("msg") or "is invalid")
    msg = msg.replace("Input should be", "must be").replace("Input ", "the value ")
    return " ".join((msg[0].lower() + msg[1:]).split())


def format_error(err: Mapping[str, Any], raw: dict) -> str:
    """One pydantic error → ``<path> <rule>; got <value>[; fix]``."""
    parts, key_error = _loc_path(tuple(err.get("loc", ())), raw)
    path = _dotted(parts)
    etype = err.get("type", "")
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if key_error:
        parent = _dotted(parts[:-1])
        key = parts[-1] if parts else value
        rule = _rule(err)
        if rule == "must be a string":  # the usual case: YAML read `1:` as an int key
            return f"{parent} keys must be strings; got key {_show(key)}"
        return f"{parent} key {_show(key)} {rule}"
    if etype == "invalid_key":  # a non-string key in a section
        where = _dotted(parts[:-1])
        known = _fields_at(parts[:-1], raw)
        listing = f" (known fields of {where}: {', '.join(known)})" if known else ""
        return f"{where} has a key {_show(value)} that is not a field name{listing}"
    if etype == "extra_forbidden":
        known = _fields_at(parts[:-1], raw)
        key = parts[-1] if parts else "?"
        where = _dotted(parts[:-1])
        listing = f" (known fields of {where}: {', '.join(known)})" if known else ""
        if not isinstance(key, str):
            return f"{where} has a key {_show(key)} that is not a field name{listing}"
        close = _close_match(key, known)
        hint = f"; did you mean {close!r}?" if close else ""
        return f"{path} is not a known field{listing}{hint}"
    if etype == "missing":
        return f"{path} is required"
    if etype in ("value_error", "assertion_error"):
        # Validators write either a whole sentence starting with its field path, or a rule
        # ("must ...") that needs the path in front.
        msg = " ".join(str(ctx.get("error") or err.get("msg") or "is invalid").split())
        msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return f"{path} {msg}" if msg.startswith("must") else msg
    return f"{path} {_rule(err)}; got {_show(value)}"


def error_messages(
    errors: list[Mapping[str, Any]],
    raw: dict,
    extra: Mapping[tuple, str] | None = None,
    fallback: Mapping[tuple, str] | None = None,
) -> list[str]:
    """One sentence per problem, for a list of pydantic errors.

    A union (``split: {...} | 'none'``) makes pydantic report one error per member; the member
    that fits the input's shape wins: a wrong-type error is dropped when another error lies at
    or below the same path, and wrong-type errors left at one path become one "a or b" rule.
    ``extra`` maps paths to messages found before pydantic ran; they replace its errors there.
    ``fallback`` messages are used at paths where pydantic found nothing.
    """
    extra = dict(extra or {})
    items = [(tuple(_loc_path(tuple(e.get("loc", ())), raw)[0]), e) for e in errors]
    items = [(p, e) for p, e in items if p not in extra]
    seen = {p for p, _ in items}
    extra.update({p: m for p, m in (fallback or {}).items() if p not in seen and p not in extra})

    def superseded(i: int) -> bool:
        p, e = items[i]
        if e.get("type") not in _TYPE_ERRORS:
            return False
        return any(
            j != i
            and (
                (len(q) > len(p) and q[: len(p)] == p)
                or (q == p and f.get("type") not in _TYPE_ERRORS)
            )
            for j, (q, f) in enumerate(items)
        ) or any(len(q) > len(p) and q[: len(p)] == p for q in extra)

    kept = [items[i] for i in range(len(items)) if not superseded(i)]
    messages: list[str] = list(extra.values())
    alternatives: dict[tuple, tuple[int, list[str], Any]] = {}  # path → (index, rules, input)
    for p, e in kept:
        if e.get("type") in _TYPE_ERRORS and p in alternatives:
            rules = alternatives[p][1]
            rule = _rule(e).removeprefix("must be ")
            if rule not in rules:
                rules.append(rule)
            continue
        if e.get("type") in _TYPE_ERRORS:
            alternatives[p] = (len(messages), [_rule(e)], e.get("input"))
        messages.append(format_error(e, raw))
    for p, (i, rules, value) in alternatives.items():
        if len(rules) > 1:  # "data.split must be a mapping or 'none'; got 'nope'"
            messages[i] = f"{_dotted(list(p))} {' or '.join(rules)}; got {_show(value)}"
    return list(dict.fromkeys(messages))
