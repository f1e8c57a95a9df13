"""Coverage-guided fuzzing of the transport's targets with atheris (optional).

Run ``python tests/wire/fuzz_atheris.py -max_total_time=600 [corpus_dir]``.
The first input byte picks the target of ``test_fuzz.TARGETS``; the rest is the input.
The targets check the caps as well as the exceptions: a decoded message within the
per-message pattern cap and the admin depth cap, a first frame within a hello's size,
and (``_amplified``) inputs blown up to frames that exhaust the per-frame budgets.
Only crdtcache is instrumented (instrumenting everything takes minutes to start). A
crash is written to ``crash-*``: add ``(target, input)`` to ``test_fuzz.REGRESSIONS``.
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]  # optional

with atheris.instrument_imports(include=["crdtcache"]):
    from test_fuzz import exercise


def one_input(data: bytes) -> None:
    """Feed one libFuzzer input to the target its first byte names."""
    if data:
        exercise(data[0], data[1:])


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
