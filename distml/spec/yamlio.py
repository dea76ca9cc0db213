"""YAML in and out without aliases (only PyYAML is imported here).

A spec is a small tree written by a person: it never needs YAML's anchors and aliases, and an
alias is how a few hundred bytes expand into billions of nodes ("billion laughs") once the tree
is walked, copied or validated. :func:`load_yaml` refuses an alias where the parser meets it,
before anything is built; :func:`dump_yaml` never writes one (PyYAML's dumper anchors an object
that appears twice), so what distml writes reads back with :func:`load_yaml`.
"""

from __future__ import annotations

from typing import Any

import yaml


class AliasError(yaml.composer.ComposerError):
    """A YAML alias (``*name``) in a document distml reads; ``line`` is 1-based."""

    def __init__(self, name: str, mark: Any):
        self.name = name
        self.line = mark.line + 1
        super().__init__(None, None, f"YAML aliases (*{name}) are not allowed", mark)


class _Loader(yaml.SafeLoader):
    """SafeLoader that stops at the first alias event (before the composer resolves it)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise AliasError(str(event.anchor), event.start_mark)
        return super().compose_node(parent, index)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        """PyYAML's, with a value its explicit tag cannot take (``!!int`` or ``!!float`` of
        nothing, ``!!bool`` of a non-boolean, ``!!timestamp`` of a non-date) reported as a YAML
        error at that node: PyYAML lets IndexError, KeyError or AttributeError escape."""
        try:
            return super().construct_object(node, deep=deep)
        except (IndexError, KeyError, AttributeError):
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value!r} is not a valid {tag} value", node.start_mark
            ) from None


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes a repeated object out again instead of anchoring it."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that raises :class:`AliasError` (a ``yaml.YAMLError``) on an alias."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def dump_yaml(obj: Any, **kwargs: Any) -> str:
    """``yaml.safe_dump`` that writes no anchors or aliases."""
    return yaml.dump(obj, Dumper=_Dumper, **kwargs)
