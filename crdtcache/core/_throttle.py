"""Log lines that a peer can cause, rate-limited per kind, with counts of the rest.

Every refused connection, dropped link or refused item is worth a line, until a peer
makes thousands of them: then the log says the first few, and after that how many more
there were. :class:`LogThrottle` lets ``burst`` lines of one *kind* through per
``window`` seconds and counts the others; the first line of a kind after its window
ended (or :meth:`LogThrottle.flush`, called periodically) says how many were held back.

Sans-IO like the rest of the core: the caller passes ``now``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["LOG_BURST", "LOG_WINDOW", "LogThrottle"]

#: Lines of one kind logged per window before the rest are only counted.
LOG_BURST: Final = 10
#: Seconds of a window.
LOG_WINDOW: Final = 10.0


@dataclass(slots=True)
class _Window:
    started: float
    logged: int = 0
    held: int = 0
    level: int = logging.WARNING


class LogThrottle:
    """Rate-limits the lines of ``logger`` per kind (see the module doc)."""

    __slots__ = ("_windows", "burst", "logger", "window")

    def __init__(
        self, logger: logging.Logger, *, burst: int = LOG_BURST, window: float = LOG_WINDOW
    ) -> None:
        if burst < 1 or window <= 0:
            raise ValueError("a log throttle needs burst >= 1 and window > 0")
        self.logger = logger
        self.burst = burst
        self.window = window
        self._windows: dict[str, _Window] = {}

    def log(
        self, now: float, kind: str, level: int, message: str, *args: Any, **kwargs: Any
    ) -> bool:
        """Log ``message % args`` unless ``kind`` used up its burst; True if logged.

        ``kwargs`` go to :meth:`logging.Logger.log` (``exc_info``, ``extra``).
        """
        current = self._windows.get(kind)
        if current is not None and now - current.started >= self.window:
            self._summarize(kind, current)
            current = None
        if current is None:
            current = self._windows[kind] = _Window(now)
        if current.logged < self.burst:
            current.logged += 1
            kwargs.setdefault("stacklevel", 2)  # the line that asked, not this one
            self.logger.log(level, message, *args, **kwargs)
            return True
        current.held += 1
        current.level = max(current.level, level)
        return False

    def flush(self, now: float, *, force: bool = False) -> None:
        """Say how many lines were held back in every window that has ended (``force``:
        in every window, as at shutdown)."""
        for kind, current in list(self._windows.items()):
            if force or now - current.started >= self.window:
                self._summarize(kind, current)
                del self._windows[kind]

    def held(self) -> int:
        """Lines counted but not logged, in the windows still open."""
        return sum(w.held for w in self._windows.values())

    def _summarize(self, kind: str, window: _Window) -> None:
        if window.held:
            self.logger.log(
                window.level,
                "%d more %s in the last %.0f s (not logged one by one)",
                window.held,
                kind,
                self.window,
            )
