"""MkDocs hooks for the documentation site (``hooks:`` in mkdocs.yml).

* Every page dropped into ``docs/integrations/`` joins the "Integrations" section of
  the navigation, after the pages mkdocs.yml lists there: an integration's page needs
  no edit of mkdocs.yml.
* Docstrings are written with Sphinx roles (``:class:`Cache```); mkdocstrings renders
  Markdown, where a role would show as ``:class:`` before the code. The role is dropped
  and a ``~`` target is shortened to its last name, as Sphinx shows it.
"""

from __future__ import annotations

import re
from typing import Any

INTEGRATIONS = "Integrations"
_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):<code>(~?)([^<]*)</code>"
)


def on_files(files: Any, config: Any) -> Any:
    """Append the pages under ``integrations/`` to the "Integrations" nav section."""
    nav = config["nav"] or []
    section = next((item for item in nav if isinstance(item, dict) and INTEGRATIONS in item), None)
    if section is None:
        return files
    listed = section[INTEGRATIONS]
    named = {entry if isinstance(entry, str) else next(iter(entry.values())) for entry in listed}
    found = sorted(
        f.src_uri
        for f in files.documentation_pages()
        if f.src_uri.startswith("integrations/") and f.src_uri not in named
    )
    listed.extend(found)
    return files


def _shown(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if short else target}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    """Render Sphinx roles in docstrings as plain code."""
    return _ROLE.sub(_shown, html)
