"""The documentation site: every code block runs, every public name is documented with an
example, and the pages that state facts (limits, the demo's output) state true ones.

Code blocks are the ```` ```python ```` blocks of ``docs/**/*.md`` and the examples in
the docstrings of the public names the API reference shows. A block may use top-level
``await`` (it then runs in ``asyncio.run``). A block preceded by the line
``<!-- not run: <reason> -->`` is skipped; use it only where running is impossible.
A block whose ``print`` calls are followed by ``# ...`` comment lines must print exactly
those lines.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import crdtcache
import crdtcache.dashboard
import crdtcache.metrics
import crdtcache.testing
from tests.doc_blocks import FENCE, run_block

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NOT_RUN = re.compile(r"<!-- not run: .+ -->\n$")

#: Names the API reference documents beyond the public modules' ``__all__``.
EXTRA_NAMES = (
    "crdtcache.cache.CacheOptions",
    "crdtcache.transport.node_id_uri",
    "crdtcache.transport.NodeClient",
    "crdtcache.transport.check_request",
    "crdtcache.core.Version",
    "crdtcache.core.Stamp",
    "crdtcache.core.check_resolver",
    "crdtcache.core.last_writer_wins",
)
PUBLIC_MODULES = (crdtcache, crdtcache.testing, crdtcache.metrics, crdtcache.dashboard)


def public_names() -> list[str]:
    names = [f"{m.__name__}.{n}" for m in PUBLIC_MODULES for n in m.__all__]
    return [*names, *EXTRA_NAMES]


def resolve(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def is_constant(obj: object) -> bool:
    return not callable(obj)


def doc_blocks() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text()
        for n, match in enumerate(FENCE.finditer(text)):
            if NOT_RUN.search(text[: match.start()][-200:]):
                continue
            found.append((f"{page.relative_to(DOCS)}:{n}", textwrap.dedent(match.group(2))))
    return found


DOC_BLOCKS = doc_blocks()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("where", "source"), DOC_BLOCKS, ids=[w for w, _ in DOC_BLOCKS])
def test_docs_code_block_runs(where: str, source: str) -> None:
    run_block(source, f"docs/{where}")


def test_docs_have_code_blocks_and_skip_few() -> None:
    pages = list(DOCS.rglob("*.md"))
    skipped = sum(len(re.findall(r"<!-- not run: ", p.read_text())) for p in pages)
    assert len(DOC_BLOCKS) >= 20 and skipped * 10 <= len(DOC_BLOCKS)  # one in ten at most


# ------------------------------------------------------------------ docstrings
def docstring(dotted: str) -> str:
    """The docstring the API reference shows (griffe reads constants' ``#:`` comments)."""
    obj = resolve(dotted)
    if not is_constant(obj):
        return inspect.getdoc(obj) or ""
    import griffe

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        extension = importlib.import_module("griffe_comments").HashColonComments()
    finally:
        sys.path.pop(0)
    package = griffe.load(
        "crdtcache", search_paths=[str(ROOT)], extensions=griffe.Extensions(extension)
    )
    found = package[dotted.removeprefix("crdtcache.")]
    return found.docstring.value if found.docstring else ""


@pytest.mark.parametrize("dotted", public_names())
def test_every_public_name_has_a_docstring_with_an_example(dotted: str) -> None:
    doc = docstring(dotted)
    assert doc.strip(), f"{dotted} has no docstring"
    if is_constant(resolve(dotted)):
        return  # a constant's docstring says what it is; its value is the example
    assert re.search(r"^Examples?:$", doc, flags=re.M) and (">>>" in doc or "```python" in doc), (
        dotted
    )
    # Literal blocks (``::``) would render as unrun code: examples are fenced or doctests.
    assert not re.search(r"::\n\n", doc), f"{dotted}: use a fenced block or >>>"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dotted", [n for n in public_names() if not is_constant(resolve(n))])
def test_docstring_examples_run(dotted: str) -> None:
    doc = inspect.getdoc(resolve(dotted)) or ""
    for n, match in enumerate(FENCE.finditer(doc)):
        run_block(textwrap.dedent(match.group(2)), f"{dotted}:example-{n}")
    if ">>>" in doc:
        parser = doctest.DocTestParser()
        test = parser.get_doctest(doc, {}, dotted, None, 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        out = io.StringIO()
        runner.run(test, out=out.write)
        assert runner.failures == 0, out.getvalue()


def test_every_public_name_is_in_the_api_reference() -> None:
    reference = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    shown = set(re.findall(r"^::: (\S+)", reference, flags=re.M))
    assert set(public_names()) <= shown, set(public_names()) - shown


# ------------------------------------------------------------------ facts
def test_the_limits_page_states_the_limits() -> None:
    from crdtcache.core import DEFAULT_MAX_VALUE_BYTES, MAX_DRIFT, MAX_KEY_CHARS, MAX_VALUE_BYTES
    from crdtcache.core._format import MAX_CLUSTER_CHARS
    from crdtcache.core._hlc import MAX_NODE_ID_CHARS
    from crdtcache.core._packing import MAX_DEPTH
    from crdtcache.core._patterns import MAX_PATTERN_TOMBSTONES
    from crdtcache.core._replica import TOMBSTONE_GRACE
    from crdtcache.store._snapshot import MAX_SNAPSHOT_BYTES
    from crdtcache.transport import HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, MAX_SEND_BUFFER
    from crdtcache.wire._auth import MIN_SECRET_BYTES
    from crdtcache.wire._codec import MAX_ITEMS, MAX_SECRETS
    from crdtcache.wire._framing import MAX_FRAME_BYTES

    page = (DOCS / "limits.md").read_text()
    mib = 1 << 20
    facts = {
        "key": f"at most **{MAX_KEY_CHARS}** characters",
        "value": f"**{DEFAULT_MAX_VALUE_BYTES // mib} MiB** encoded",
        "memory value": f"up to **{MAX_VALUE_BYTES // mib} MiB**",
        "nesting": f"**{MAX_DEPTH}** levels",
        "patterns": f"**{MAX_PATTERN_TOMBSTONES:,}** per node",
        "names": f"at most **{MAX_NODE_ID_CHARS}** characters",
        "frame": f"**{MAX_FRAME_BYTES // mib} MiB**",
        "items": f"**{MAX_ITEMS:,}**",
        "connections": f"**{MAX_CONNECTIONS}**",
        "send buffer": f"**{MAX_SEND_BUFFER // mib} MiB**",
        "handshake": f"**{HANDSHAKE_TIMEOUT:g} s**",
        "drift": f"**{MAX_DRIFT:g} s**",
        "grace": f"**{TOMBSTONE_GRACE / 3600:g} hour**",
        "snapshot": f"**{MAX_SNAPSHOT_BYTES >> 30} GiB**",
        "secret": f"at least **{MIN_SECRET_BYTES}** bytes; at most **{MAX_SECRETS}** secrets",
    }
    assert MAX_CLUSTER_CHARS == MAX_NODE_ID_CHARS
    missing = {what: text for what, text in facts.items() if text not in page}
    assert not missing, missing


def normalized(text: str) -> list[str]:
    """Demo output with what varies from run to run (ids, numbers, bars) masked."""
    text = re.sub(r"demo-[0-9a-f]{6}", "demo-X", text)
    text = re.sub(r"\b[0-9a-f]{12}\b", "ID", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    text = re.sub(r"#+", "#", text)
    return [line.rstrip() for line in text.strip().splitlines()]


@pytest.fixture(scope="module")
def demo_output() -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "crdtcache.cli", "demo", "--nodes", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return normalized(done.stdout)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("page", ["README.md", "docs/quickstart.md"])
def test_the_demo_output_shown_is_what_it_prints(page: str, demo_output: list[str]) -> None:
    text = (ROOT / page).read_text()
    command = text.index("crdtcache demo --nodes 5\n```")
    shown = re.search(r"```text\n(.*?)```", text[command:], flags=re.S)
    assert shown is not None, f"{page} shows no demo output after its command"
    assert normalized(shown.group(1)) == demo_output
