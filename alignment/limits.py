"""Per-user concurrency limits, so one user of a shared link cannot starve the others.

Gradio's ``concurrency_limit`` caps an event for everybody at once; this caps how many long-running
requests (generation, evaluation) one user may have in flight. Users are keyed by their signed-in name, or by
their browser session when nobody signs in. One ``UserLimiter`` per app, held by the AppContext.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class LimitExceeded(RuntimeError):
    """The user already has as many requests running as allowed."""


class UserLimiter:
    def __init__(self, per_user: int = 1) -> None:
        if per_user < 1:
            raise ValueError("per_user must be at least 1.")
        self.per_user = per_user
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    def running(self, user: str) -> int:
        with self._lock:
            return self._running.get(user, 0)

    @contextmanager
    def slot(self, user: str, what: str = "request") -> Iterator[None]:
        with self._lock:
            count = self._running.get(user, 0)
            if count >= self.per_user:
                raise LimitExceeded(
                    f"You already have {count} {what}{'s' if count != 1 else ''} running; wait for "
                    f"{'it' if count == 1 else 'them'} to finish (the limit is {self.per_user} at a time per "
                    "user, so everyone gets a turn)."
                )
            self._running[user] = count + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._running.get(user, 1) - 1
                if left:
                    self._running[user] = left
                else:
                    self._running.pop(user, None)
