"""What both background plan checkers share: one pending-job slot (a newer ``submit`` replaces a job not
yet started), one worker thread started on the first submit, and the finished ``(job, scores)`` list that
``results()`` drains. Subclasses implement ``_loop`` (the worker thread) and ``close``."""

from __future__ import annotations

import threading


class BackgroundChecker:
    thread_name = "cascade-plan-check"

    def __init__(self):
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._job = None  # the job not yet started
        self._done: list = []
        self._closed = False
        self._thread: threading.Thread | None = None
        self.jobs = 0  # jobs that came back with scores
        self.failures = 0  # jobs that came back without scores
        self.cpu_s = 0.0  # the checker's CPU seconds over finished jobs

    def submit(self, job) -> None:
        with self._lock:
            if self._closed:
                return
            self._job = job
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
                self._thread.start()
        self._wake.set()

    def results(self) -> list:
        with self._lock:
            out, self._done = self._done, []
        return out

    def _loop(self) -> None:
        raise NotImplementedError
