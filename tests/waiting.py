"""Waiting in tests: poll a condition until it holds or a deadline passes (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, poll_s: float = 0.2) -> T:
    """Poll `check` until it returns a truthy value and return it; raise TimeoutError naming `what`.

    `check` may raise while the thing it looks at is still coming up; the last error is reported.
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as e:
            last_error = e
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout_s} s waiting for {what}"
                + (f" (last error: {last_error!r})" if last_error else "")
            )
        time.sleep(poll_s)  # the poll interval of a deadline-bounded wait, not a wait in itself
