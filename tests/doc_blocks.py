"""Running the code blocks of the README, the docs and docstrings (tests/test_docs.py).

A block runs in a fresh module; it may use top-level ``await`` (then it runs in
``asyncio.run``). A block whose ``print`` calls are followed by ``# ...`` comment
lines must print exactly those lines: the output shown is the output.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import re
import sys
import types

#: A fenced Python block, possibly indented (as in a docstring's Example section).
FENCE = re.compile(r"^([ \t]*)```python\n(.*?)^\1```", flags=re.M | re.S)


def expected_output(source: str) -> list[str] | None:
    """The ``# ...`` lines right after ``print`` calls, or None if there are none."""
    lines = source.splitlines()
    shown: list[str] = []
    for i, line in enumerate(lines):
        if line.strip().startswith("print("):
            for after in lines[i + 1 :]:
                if not after.strip().startswith("# "):
                    break
                shown.append(after.strip()[2:])
    return shown or None


def run_block(source: str, name: str) -> None:
    """Run ``source`` in a fresh module (top-level await allowed); check what it prints."""
    module = types.ModuleType(f"docs_example_{abs(hash(name))}")
    code = compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    saved = sys.modules.get(module.__name__)
    sys.modules[module.__name__] = module  # dataclasses look their module up
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            result = eval(code, module.__dict__)
            if inspect.iscoroutine(result):
                asyncio.run(result)
    finally:
        if saved is None:
            sys.modules.pop(module.__name__, None)
    expected = expected_output(source)
    if expected is not None:
        assert out.getvalue().splitlines() == expected
