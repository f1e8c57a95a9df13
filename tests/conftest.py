"""Shared pytest configuration: the hypothesis profiles.

``default`` and ``ci`` (chosen when ``CI=true``) keep the core suite well within 90 s
on a 2-core shared machine, and are derandomized: a run is the same every time.
``long`` (``HYPOTHESIS_PROFILE=long``) explores new cases on every run: 500 examples a
property, 5000 random cluster schedules, 50 seeds of the long scenario; a failure
prints the blob that reproduces it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}

settings.register_profile("default", max_examples=60, derandomize=True, **_COMMON)
settings.register_profile("ci", max_examples=60, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=500, **_COMMON)

_chosen = os.environ.get("HYPOTHESIS_PROFILE")
if _chosen is None:
    _chosen = "ci" if os.environ.get("CI", "").lower() == "true" else "default"
settings.load_profile(_chosen)
