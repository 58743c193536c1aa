"""Any plan checker on one background thread: ``submit`` returns at once (a newer job replaces a job not
yet started), ``results`` drains what finished. The HTTP router uses it so a check never runs on the
request path; its CPU is bounded by the replay size, the candidate count and the policy's check timer
(one check at a time). ``close()`` stops the thread (router shutdown).

The router's default is ``process.ProcessPlanChecker`` (a child process: no GIL shared with the request
loop); this thread is ``SGLANG_CASCADE_PLAN_CHECK_MODE=thread`` (see ``factory.make_background_checker``)."""

from __future__ import annotations

import logging
import time

from .background import BackgroundChecker

log = logging.getLogger("sglang_cascade.planning")


class ThreadedPlanChecker(BackgroundChecker):
    def __init__(self, inner):
        super().__init__()  # cpu_s: this thread's CPU seconds over the jobs (time.thread_time)
        self.inner = inner

    @property
    def busy(self) -> bool:
        """A job is running (the policy starts no new check meanwhile)."""
        return self._running is not None

    def _run(self, job) -> list:
        t0 = time.thread_time()
        try:
            scores = self.inner.score(job)
            self.jobs += 1
        except Exception:  # a failed check keeps the plan in force
            log.exception("plan check failed")
            scores = []
            self.failures += 1
        job.cost_s = time.thread_time() - t0  # the measured CPU (the policy's budget governor)
        self.cpu_s += job.cost_s
        return scores

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            t = self._thread
        self._wake.set()
        if t is not None:
            t.join(timeout)
        self.inner.close()
