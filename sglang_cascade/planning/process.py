"""The simulator plan checker in one separate worker process (the HTTP router's default).

Same protocol as ``threaded.ThreadedPlanChecker``: ``submit(job)`` returns at once (a newer job replaces a
job not yet started), ``results()`` drains the finished ``(job, scores)``, ``busy`` says a job is queued or
running, ``close()`` stops the worker. The difference: the replays run in a child process, so a
multi-second simulation never holds the router's GIL (a thread-mode check competes with the asyncio request
loop for it).

- The child is started with the ``spawn`` context (never ``fork`` from the router's threaded asyncio
  process), lowers its own priority (``os.nice(10)``) and builds its ``SimPlanChecker`` from picklable
  config: the ``CostModel`` and the ``SimCheckerConfig``.
- Jobs go down and scores come back over one ``multiprocessing.Pipe``. A small parent-side thread does the
  pipe I/O (blocked in ``send``/``recv`` without the GIL; it holds it only to pickle a job and unpickle
  the scores), so the child's start-up (the cost model is ~190 KB, more than a pipe buffer) and a child
  that is still importing never block the request path.
- The replay and the DP are built in the child too: a job with a ``ReplaySource`` gets its arrivals and warm
  start there, one with a ``CandidateSpec`` its candidates (``SimPlanChecker.score`` ->
  ``policies.plan_check.resolve_job``); the child sends the candidates and the replay's size and rate back
  with the scores (``job.answer()``) and the I/O thread puts them on the parent's job (``job.take_answer``).
- A job whose check raises in the child, or whose child dies, yields ``(job, [])``: no scores, the plan in
  force stays. A dead child is started again for the next job (i.e. on the next ``submit``).
- ``close()`` terminates the child (then kills it if it does not exit) and joins it and the I/O thread, also
  when a job is running.
  If the router dies without closing it, the child (daemonic) is terminated by multiprocessing at a normal
  exit; after a SIGKILL it reads EOF on its pipe and exits (at the latest when its running job ends).
- ``cpu_s`` is the child's CPU seconds summed over finished jobs (``time.process_time`` in the child, per
  job; each job's own is its ``cost_s``, what the policy's CPU budget governor charges); ``jobs`` counts the jobs that came back with scores.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time

from ..core.costmodel import CostModel
from .background import BackgroundChecker
from .sim_checker import SimCheckerConfig

log = logging.getLogger("sglang_cascade.planning")

NICE = 10  # the child's niceness increment


def _child_main(conn, cost_model: CostModel, cfg: SimCheckerConfig, nice: int) -> None:
    """The worker process: receives jobs until ``None`` or EOF; answers ("ok", scores, cpu_s, job.answer()) or
    ("err", text, cpu_s, None): the candidates the DP built here travel back with the scores."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the router handles Ctrl-C and terminates us
    if nice:
        try:
            os.nice(nice)
        except OSError:
            pass
    from ..sim.cluster import simulate
    from .sim_checker import SimPlanChecker

    checker = SimPlanChecker(cost_model, cfg, simulate)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if job is None:
            return
        t0 = time.process_time()
        try:
            scores = checker.score(job)
            msg = ("ok", scores, time.process_time() - t0, job.answer())
        except Exception as e:  # the parent logs it; the plan in force stays
            msg = ("err", f"{type(e).__name__}: {e}", time.process_time() - t0, None)
        try:
            conn.send(msg)
        except (BrokenPipeError, OSError):
            return


class ProcessPlanChecker(BackgroundChecker):
    thread_name = "cascade-plan-check-io"

    def __init__(self, cost_model: CostModel, cfg: SimCheckerConfig | None = None, nice: int = NICE):
        super().__init__()  # failures: raised, or the child died; cpu_s: the child's, per job
        self.cost_model, self.cfg, self.nice = cost_model, cfg or SimCheckerConfig(), nice
        self._ctx = mp.get_context("spawn")
        self._proc = None  # the child process
        self._conn = None  # the parent's end of the pipe
        self.restarts = 0  # children started after the first
        self._started = 0

    # --- protocol: submit / results (BackgroundChecker), busy, close ------------------------------------
    @property
    def busy(self) -> bool:
        with self._lock:
            return self._job is not None or self._running is not None

    @property
    def pid(self) -> int | None:
        """The child's pid (None before the first job, after close, or after a death until the next job)."""
        p = self._proc
        return p.pid if p is not None else None

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            self._job = None
            t = self._thread
        self._stop_child(timeout)  # a running job's recv fails at once: the I/O thread ends
        self._wake.set()
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        self._forget_child()

    # --- the I/O thread (BackgroundChecker._loop runs _run) ------------------------------------------
    def _run(self, job) -> list:
        try:
            conn = self._ensure_child()
            conn.send(job)
            kind, payload, cpu, answer = conn.recv()
        except Exception as e:  # the child died (killed, crashed) or could not start: no scores
            with self._lock:
                closed = self._closed
            if not closed:
                log.warning("plan check process failed (%s: %s); the plan in force stays", type(e).__name__, e)
                self.failures += 1
            self._forget_child()
            return []
        self.cpu_s += cpu
        job.cost_s = cpu  # the child's measured CPU for this job (the policy's budget governor)
        if kind != "ok":
            log.error("plan check failed in the checker process: %s", payload)
            self.failures += 1
            return []
        job.take_answer(answer)
        self.jobs += 1
        return payload

    def _ensure_child(self):
        """The live child's pipe end; starts a child when there is none or it died (only this thread does)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("closed")
            if self._proc is not None and self._proc.is_alive():
                return self._conn
        self._forget_child()
        parent, child = self._ctx.Pipe(duplex=True)
        p = self._ctx.Process(
            target=_child_main,
            args=(child, self.cost_model, self.cfg, self.nice),
            name="cascade-plan-check",
            daemon=True,
        )
        p.start()
        child.close()  # the child's end lives in the child only: its death reads as EOF here
        with self._lock:
            self._proc, self._conn = p, parent
            self.restarts += self._started > 0
            self._started += 1
            closed = self._closed
        if closed:  # close() ran while it was starting
            self._stop_child(1.0)
            raise RuntimeError("closed")
        return parent

    def _forget_child(self) -> None:
        """Stop (if still alive) and join the child, close this end of its pipe (I/O thread or close())."""
        self._stop_child(1.0)
        with self._lock:
            p, c = self._proc, self._conn
            self._proc = self._conn = None
        if p is not None:
            p.join(0.1)
        if c is not None:
            try:
                c.close()
            except OSError:
                pass

    def _stop_child(self, timeout: float) -> None:
        """Terminate the child, then kill it if it does not exit; join it. Leaves the pipe to its reader."""
        with self._lock:
            p = self._proc
        if p is None:
            return
        if p.is_alive():
            p.terminate()
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join(timeout)
        else:
            p.join(0.1)
