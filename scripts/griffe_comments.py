"""A griffe extension for the API reference: ``#:`` comments document attributes.

The code documents constants and dataclass fields the Sphinx way, with ``#:`` comment
lines right above the assignment; griffe reads only string literals below it. This
extension gives an attribute without a docstring the text of those comment lines.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import griffe


@cache
def _lines(path: Path) -> tuple[str, ...]:
    return tuple(path.read_text().splitlines())


class HashColonComments(griffe.Extension):
    """Turn ``#:`` comment lines above an attribute into its docstring."""

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: Any) -> None:
        """Give ``attr`` the ``#:`` comment above it when it has no docstring."""
        if attr.docstring is not None or attr.lineno is None:
            return
        filepath = attr.filepath
        if not isinstance(filepath, Path):
            return
        lines = _lines(filepath)
        index = attr.lineno - 2  # the line above the assignment, 0-based
        comment: list[str] = []
        while index >= 0 and lines[index].strip().startswith("#:"):
            comment.insert(0, lines[index].strip()[2:].strip())
            index -= 1
        if comment:
            attr.docstring = griffe.Docstring("\n".join(comment), lineno=index + 2, parent=attr)
