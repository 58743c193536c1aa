"""Any plan checker on one background thread: ``submit`` returns at once (a newer job replaces a job not
yet started), ``results`` drains what finished. The HTTP router uses it so a check never runs on the
request path; its CPU is bounded by the replay size, the candidate count and the policy's check timer
(one check at a time). ``close()`` stops the thread (router shutdown).

The router's default is ``process.ProcessPlanChecker`` (a child process: no GIL shared with the request
loop); this thread is ``SGLANG_CASCADE_PLAN_CHECK_MODE=thread`` (see ``factory.make_background_checker``)."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("sglang_cascade.planning")


class ThreadedPlanChecker:
    def __init__(self, inner):
        self.inner = inner
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._job = None
        self._done: list = []
        self._closed = False
        self._thread: threading.Thread | None = None
        self.busy = False
        self.jobs = 0  # jobs that came back with scores
        self.failures = 0
        self.cpu_s = 0.0  # this thread's CPU seconds over the jobs (time.thread_time)

    def submit(self, job) -> None:
        with self._lock:
            if self._closed:
                return
            self._job = job
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="cascade-plan-check", daemon=True)
                self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                if self._closed:
                    return
                job, self._job = self._job, None
                self.busy = job is not None
            if job is None:
                continue
            t0 = time.thread_time()
            try:
                scores = self.inner.score(job)
                self.jobs += 1
            except Exception:  # a failed check keeps the plan in force
                log.exception("plan check failed")
                scores = []
                self.failures += 1
            self.cpu_s += time.thread_time() - t0
            with self._lock:
                self._done.append((job, scores))
                self.busy = False

    def results(self) -> list:
        with self._lock:
            out, self._done = self._done, []
        return out

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            t = self._thread
        self._wake.set()
        if t is not None:
            t.join(timeout)
        self.inner.close()
