"""Log lines a peer can cause: a burst per kind and window, then a count."""

from __future__ import annotations

import logging

import pytest

from crdtcache.core._throttle import LogThrottle

log = logging.getLogger("tests.throttle")


def test_a_burst_per_kind_then_a_count_when_the_window_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tests.throttle")
    throttle = LogThrottle(log, burst=3, window=10.0)
    logged = [throttle.log(0.1 * i, "drops", logging.WARNING, "drop %d", i) for i in range(50)]
    assert logged == [True] * 3 + [False] * 47
    assert throttle.log(1.0, "other kind", logging.INFO, "separate budget")
    assert throttle.held() == 47
    throttle.flush(9.0)  # the window is still open: nothing said yet
    assert [r.getMessage() for r in caplog.records][-1] == "separate budget"
    throttle.flush(10.1)
    said = "47 more drops in the last 10 s (not logged one by one)"
    assert caplog.records[-1].getMessage() == said
    assert caplog.records[-1].levelno == logging.WARNING
    assert throttle.log(10.2, "drops", logging.WARNING, "a new window")


def test_the_count_comes_with_the_next_line_or_at_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tests.throttle")
    throttle = LogThrottle(log, burst=1, window=5.0)
    throttle.log(0, "k", logging.WARNING, "one")
    throttle.log(1, "k", logging.WARNING, "two")
    throttle.log(6, "k", logging.WARNING, "three")  # new window: says what was held first
    assert [r.getMessage() for r in caplog.records][-2:] == [
        "1 more k in the last 5 s (not logged one by one)",
        "three",
    ]
    throttle.log(7, "k", logging.ERROR, "four")
    throttle.flush(7, force=True)
    assert caplog.records[-1].levelno == logging.ERROR


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        LogThrottle(log, burst=0)
