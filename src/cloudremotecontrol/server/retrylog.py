"""The log of a background loop that tries again through failures (a database outage,
say): the first failure is logged, then one line every ``every`` seconds at most while
it keeps failing ("still failing ... (K attempts)"), and one line once it works again;
not a line per attempt (rate control tries 4 times a second)."""

from __future__ import annotations

import logging
import time

from ..errors import CrcError

#: Seconds between two "still failing" lines of one loop, at least.
STILL_FAILING_EVERY = 30.0


class RetryLog:
    """What one loop (``what``: "rate control") logs of its failures."""

    def __init__(self, log: logging.Logger, what: str, every: float = STILL_FAILING_EVERY) -> None:
        self.log = log
        self.what = what
        self.every = every
        self.failures = 0  # in a row
        self._logged_at = 0.0

    def failed(self, exc: BaseException, detail: str = "trying again") -> None:
        """One attempt failed: a ``CrcError`` (the database is unavailable...) is a
        warning, anything else an error (with its repr: it is a bug)."""
        self.failures += 1
        now = time.monotonic()
        expected = isinstance(exc, CrcError | OSError)
        text = str(exc) if expected else repr(exc)
        level = logging.WARNING if expected else logging.ERROR
        if self.failures == 1:
            self.log.log(level, "%s: %s: %s", self.what, detail, text)
        elif now - self._logged_at >= self.every:
            self.log.log(
                level, "%s: still failing: %s (%d attempts)", self.what, text, self.failures
            )
        else:
            return
        self._logged_at = now

    def worked(self) -> None:
        """An attempt worked: after failures, one line says so (a warning, as the
        failure was: the default log level shows both)."""
        if self.failures:
            self.log.warning("%s: working again after %d failed attempts", self.what, self.failures)
            self.failures = 0
