"""Error sentences of spec validation: one line per problem, naming the field by its dotted
path (``model.params.max_depth``), what it must be and what it got (CONVENTIONS.md §5)."""

from __future__ import annotations

import difflib
import re
import typing
from typing import Any, Iterable, Mapping

from pydantic import BaseModel

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


def show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, shortened; never fails (huge ints have no repr past 4300 digits)."""
    try:
        text = repr(value)
    except Exception:  # ValueError for ints with too many digits, or a broken __repr__
        if isinstance(value, int):
            return f"an integer of about {int(abs(value).bit_length() * 0.30103)} digits"
        return type_word(value)
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_word(value: Any) -> str:
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


def dotted(parts: list) -> str:
    """``data.split.valid``, ``data.features[0]``; odd keys as ``data['a b']``."""
    out = ""
    for p in parts:
        if _plain_key(p):
            out += f".{p}" if out else p
        elif isinstance(p, int) and not isinstance(p, bool):
            out += f"[{p}]"
        else:
            out += f"[{show(p, 40)}]"
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
        model = next((a for a in models_in(field.annotation)), None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def models_in(annotation: Any) -> Iterable[type]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from models_in(arg)


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
    path = dotted(parts)
    etype = err.get("type", "")
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if key_error:
        parent = dotted(parts[:-1])
        key = parts[-1] if parts else value
        rule = _rule(err)
        if rule == "must be a string":  # the usual case: YAML read `1:` as an int key
            return f"{parent} keys must be strings; got key {show(key)}"
        return f"{parent} key {show(key)} {rule}"
    if etype == "invalid_key":  # a non-string key in a section
        where = dotted(parts[:-1])
        known = _fields_at(parts[:-1], raw)
        listing = f" (known fields of {where}: {', '.join(known)})" if known else ""
        return f"{where} has a key {show(value)} that is not a field name{listing}"
    if etype == "extra_forbidden":
        known = _fields_at(parts[:-1], raw)
        key = parts[-1] if parts else "?"
        where = dotted(parts[:-1])
        listing = f" (known fields of {where}: {', '.join(known)})" if known else ""
        if not isinstance(key, str):
            return f"{where} has a key {show(key)} that is not a field name{listing}"
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
    return f"{path} {_rule(err)}; got {show(value)}"


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
            messages[i] = f"{dotted(list(p))} {' or '.join(rules)}; got {show(value)}"
    return list(dict.fromkeys(messages))
