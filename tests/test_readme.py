"""The README's commands and examples are the ones that work, on the Quick start install."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.doc_blocks import run_block

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", README, flags=re.S)
#: What `pip install crdtcache` leaves out: the extras. The README's examples must run
#: without them (the Quick start installs none).
EXTRAS = ("pydantic", "aiohttp", "prometheus_client", "redis", "uvloop")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert command in README


@pytest.mark.parametrize("source", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for extra in EXTRAS:  # None in sys.modules makes an import raise ImportError
        monkeypatch.setitem(sys.modules, extra, None)
    run_block(source, "README.md")


def test_the_first_example_prints_labelled_figures() -> None:
    assert 'print(f"hits {local.hits}, misses {local.misses}' in EXAMPLES[0]
    assert "# hits 1, misses 11, hit rate 8%" in EXAMPLES[0]


def test_the_readme_links_the_docs_and_says_how_to_build_them() -> None:
    assert "(docs/index.md)" in README and "mkdocs serve" in README
    for option, extra in (("schema", "[pydantic]"), ("metrics", "[prometheus]")):
        row = next(line for line in README.splitlines() if line.startswith(f"| `{option}`"))
        assert extra in row, row
    assert "at most 1024 characters" in README and "at most 1 MiB" in README
