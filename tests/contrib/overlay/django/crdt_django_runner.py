"""Django's test runner, recording every test's outcome as JSON (``CRDT_RESULTS``)."""

from __future__ import annotations

import json
import os
import unittest
from typing import Any, ClassVar

from django.test.runner import DiscoverRunner


class RecordingResult(unittest.TextTestResult):
    """Every test's id, outcome (passed, failed, error, skipped...) and detail."""

    records: ClassVar[list[dict[str, str]]] = []

    def _record(self, test: Any, outcome: str, detail: str = "") -> None:
        RecordingResult.records.append({"id": test.id(), "outcome": outcome, "detail": detail})

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        if not any(r["id"] == test.id() for r in RecordingResult.records):
            self._record(test, "passed")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._record(test, "failed", self._exc_info_to_string(err, test))

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._record(test, "error", self._exc_info_to_string(err, test))

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._record(test, "skipped", reason)

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._record(test, "failed", self._exc_info_to_string(err, subtest))

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, "xfailed")

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, "xpassed")


class RecordingRunner(DiscoverRunner):
    """Django's runner with :class:`RecordingResult`."""

    def get_resultclass(self) -> Any:
        return RecordingResult

    def suite_result(self, suite: Any, result: Any, **kwargs: Any) -> int:
        with open(os.environ["CRDT_RESULTS"], "w") as f:
            json.dump(RecordingResult.records, f, indent=1)
        return int(super().suite_result(suite, result, **kwargs))
