"""Shared pytest configuration: the hypothesis profiles.

``default`` and ``ci`` keep the core suite within about 90 s on a 2-core shared
machine; ``long`` runs thousands of schedules (``HYPOTHESIS_PROFILE=long``). The
default and ci profiles are derandomized, so a run is the same from one time to the
next; ``long`` explores new schedules every time and prints how to reproduce a failure.
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
settings.register_profile("long", max_examples=2000, **_COMMON)

_chosen = os.environ.get("HYPOTHESIS_PROFILE")
if _chosen is None:
    _chosen = "ci" if os.environ.get("CI", "").lower() == "true" else "default"
settings.load_profile(_chosen)
