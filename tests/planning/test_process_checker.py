"""The plan checker in a separate process (planning/process.py, the HTTP router's default): same scores as
the synchronous SimPlanChecker, a newer job replaces a queued one, a killed child yields no scores and the
next job gets a fresh child, close() leaves no child process."""

from __future__ import annotations

import os
import signal
import time

import pytest

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import load_trace
from sglang_cascade.planning.factory import make_background_checker, make_sim_checker, plan_check_mode
from sglang_cascade.planning.process import ProcessPlanChecker
from sglang_cascade.planning.sim_checker import SimCheckerConfig
from sglang_cascade.planning.threaded import ThreadedPlanChecker
from sglang_cascade.policies.plan_check import Candidate, PlanCheckJob

CM = CostModel.for_names("llama-3-8b", "h100")


def _job(n_req: int = 150, trigger: str = "timer", instances: int = 4) -> PlanCheckJob:
    reqs = load_trace("sharegpt", num_requests=n_req, rate=20.0, seed=1)
    arrivals = [(r.arrival, r.prompt_len, r.output_len) for r in reqs]
    cands = [Candidate("pooled", [], [instances]), Candidate("dp1", [600], [1, instances - 1])]
    return PlanCheckJob(cands, arrivals, instances, trigger, 0.0, 0.2, 0)


def _wait(chk, n: int, timeout: float = 15.0) -> list:
    out, t0 = [], time.time()
    while len(out) < n and time.time() - t0 < timeout:
        out += chk.results()
        time.sleep(0.02)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_scores_in_the_child_equal_the_synchronous_checker_and_close_leaves_no_child():
    cfg = SimCheckerConfig(seed=3)
    job = _job()
    want = make_sim_checker(CM, cfg).score(job)
    chk = ProcessPlanChecker(CM, cfg)
    try:
        chk.submit(job)
        got = _wait(chk, 1)
        assert len(got) == 1 and got[0][0].trigger == job.trigger
        assert got[0][1] == want and [s.name for s in want] == ["pooled", "dp1"]
        assert chk.jobs == 1 and chk.cpu_s > 0 and not chk.busy
        pid = chk.pid
        assert pid is not None and pid != os.getpid()
    finally:
        chk.close()
    assert chk.pid is None and not _alive(pid)
    chk.submit(job)  # closed: ignored
    assert chk.results() == [] and chk.pid is None


def test_a_newer_job_replaces_a_queued_one():
    chk = ProcessPlanChecker(CM)
    try:
        chk.submit(_job(3000, "first"))  # runs (the child starts, then scores it; long enough to still run
        # when the next two arrive on a loaded 2-core machine: a 600-request job once finished first)
        t0 = time.time()
        while chk._running is None and time.time() - t0 < 10:
            time.sleep(0.005)
        chk.submit(_job(100, "queued"))
        chk.submit(_job(100, "newer"))
        assert chk.busy
        got = _wait(chk, 2)
        assert [j.trigger for j, _ in got] == ["first", "newer"], [j.trigger for j, _ in got]
        assert all(s for _, s in got)
    finally:
        chk.close()


def test_a_child_killed_mid_job_gives_no_scores_and_the_next_submit_restarts_it():
    chk = ProcessPlanChecker(CM)
    try:
        chk.submit(_job(3000, "killed"))
        t0 = time.time()
        while (chk._running is None or chk.pid is None) and time.time() - t0 < 10:
            time.sleep(0.005)
        time.sleep(0.3)  # mid-job (or still starting: killed either way before it answers)
        pid = chk.pid
        os.kill(pid, signal.SIGKILL)
        got = _wait(chk, 1)
        assert [(j.trigger, s) for j, s in got] == [("killed", [])]
        assert chk.failures == 1 and not _alive(pid)
        chk.submit(_job(100, "after"))
        got = _wait(chk, 1)
        assert [j.trigger for j, _ in got] == ["after"] and got[0][1]
        assert chk.pid not in (None, pid) and chk.restarts == 1
    finally:
        chk.close()


def test_close_stops_a_running_job_and_leaves_no_child():
    chk = ProcessPlanChecker(CM)
    chk.submit(_job(3000, "long"))
    t0 = time.time()
    while chk.pid is None and time.time() - t0 < 10:
        time.sleep(0.005)
    pid = chk.pid
    time.sleep(0.2)
    t = time.time()
    chk.close()
    assert time.time() - t < 5.0
    assert not _alive(pid) and chk.pid is None and chk.results() == []
    assert chk._thread is None or not chk._thread.is_alive()


def test_the_router_default_is_the_process_and_thread_stays_available(monkeypatch):
    monkeypatch.delenv("SGLANG_CASCADE_PLAN_CHECK_MODE", raising=False)
    assert plan_check_mode() == "process"
    c = make_background_checker(CM)
    assert isinstance(c, ProcessPlanChecker)
    c.close()
    monkeypatch.setenv("SGLANG_CASCADE_PLAN_CHECK_MODE", "thread")
    c = make_background_checker(CM)
    assert isinstance(c, ThreadedPlanChecker)
    c.close()
    monkeypatch.setenv("SGLANG_CASCADE_PLAN_CHECK_MODE", "fork")
    with pytest.raises(ValueError):
        make_background_checker(CM)
