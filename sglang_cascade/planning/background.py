"""What both background plan checkers share: one pending-job slot (a newer ``submit`` replaces a job not
yet started), one worker thread started on the first submit that runs one job at a time (``_running``), and
the finished ``(job, scores)`` list that ``results()`` drains. Subclasses implement ``_run(job) -> scores``
(never raises: a failed check is ``[]``) and ``close``."""

from __future__ import annotations

import threading


class BackgroundChecker:
    thread_name = "cascade-plan-check"

    def __init__(self):
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._job = None  # the job not yet started
        self._running = None  # the job the worker thread is running
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
        """The worker thread: take the pending job, run it, hand back its scores; ends once closed."""
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                if self._closed:
                    return
                job, self._job = self._job, None
                self._running = job
            if job is None:
                continue
            scores = self._run(job)
            with self._lock:
                self._running = None
                if self._closed:
                    return
                self._done.append((job, scores))
                if self._job is not None:  # a newer job came in while this one ran
                    self._wake.set()

    def _run(self, job) -> list:
        raise NotImplementedError
