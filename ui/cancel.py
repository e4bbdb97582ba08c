"""Per-session cancel flags for long jobs (pair generation, red-team runs).

One ``SessionJobs`` per tab, made inside its ``build()`` (never module-level). A job registers its browser
session; the Cancel button sets that session's flag, which the job checks between batches. ``cancels=`` on
the button would not do: it abandons the worker thread while it still holds the model lock.
"""

from __future__ import annotations

import threading


class JobAlreadyRunning(RuntimeError):
    """This session already has a job of this kind running."""


class SessionJobs:
    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        """Register a job for ``session``; returns the event that Cancel sets. Call ``finish`` when it ends."""
        stop = threading.Event()
        with self._lock:
            if session in self._flags:
                raise JobAlreadyRunning(session)
            self._flags[session] = stop
        return stop

    def finish(self, session: str) -> None:
        with self._lock:
            self._flags.pop(session, None)

    def cancel(self, session: str) -> bool:
        """Ask the session's job to stop; False when it has none running."""
        with self._lock:
            flag = self._flags.get(session)
        if flag is None:
            return False
        flag.set()
        return True
