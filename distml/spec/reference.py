"""Field reference of the spec, generated from the pydantic models (``distml schema --markdown``).

``docs/spec_reference.md`` is this output; a test keeps it in step with the code.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else "(section defaults)"
    return f"`{field.default!r}`"


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        desc = (field.description or "").replace("|", "\\|")
        bounds = [
            f"{k} {getattr(m, k)}"
            for m in field.metadata
            for k in ("ge", "gt", "le", "lt")
            if getattr(m, k, None) is not None
        ]
        if bounds:
            desc += f" ({', '.join(bounds)})"
        rows.append((path, _type_name(field.annotation), _default(field), desc))
        for sub in _submodels(field.annotation):
            rows += _rows(sub, f"{path}.")
    return rows


def _submodels(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _submodels(a)]


def markdown() -> str:
    """The whole reference: one table per kind."""
    from distml.registry import KINDS, kind_module

    out = [
        "# Spec reference",
        "",
        "Generated from the pydantic models by `distml schema --markdown`; do not edit by hand.",
        "Every section rejects unknown keys (with a did-you-mean).",
        "",
    ]
    for kind in KINDS:
        spec = kind_module(kind).Spec
        out += [
            f"## kind: `{kind}`",
            "",
            (spec.__doc__ or "").strip().splitlines()[0],
            "",
            "| field | type | default | description |",
            "|---|---|---|---|",
        ]
        out += [f"| `{p}` | {t} | {d} | {desc} |" for p, t, d, desc in _rows(spec, "")]
        out.append("")
    return "\n".join(out)
