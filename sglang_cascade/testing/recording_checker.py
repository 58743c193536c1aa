"""Plan checkers for tests: ``RecordingChecker`` only records the jobs it is given (it never answers, so the plan
in force stays, and a test inspects what the policy asked to be checked); ``DeferredChecker`` answers when the test
calls ``work()``, as a background checker answers in a later call into the policy."""

from __future__ import annotations


class RecordingChecker:
    def __init__(self):
        self.jobs = []

    def submit(self, job) -> None:
        self.jobs.append(job)

    def results(self) -> list:
        return []

    def close(self) -> None:
        pass


class DeferredChecker(RecordingChecker):
    """Keeps the jobs; ``work()`` (called by the test, outside the router's calls) scores the pending ones with
    ``score(job) -> list[PlanScore]``, and the next ``results()`` hands them to the policy."""

    def __init__(self, score):
        super().__init__()
        self.score, self.pending, self.done = score, [], []

    def submit(self, job) -> None:
        super().submit(job)
        self.pending.append(job)

    def work(self) -> None:
        self.done += [(j, self.score(j)) for j in self.pending]
        self.pending = []

    def results(self) -> list:
        out, self.done = self.done, []
        return out


def feed_finished(router, cluster, n: int = 8) -> None:
    """Route ``n`` requests (0.5 s apart, prompts 100, 150, ...) and finish each 1 s later with 9 output tokens:
    enough finished arrivals for a router's timer check (``min_replay`` <= n)."""
    from ..core.views import RequestView

    for i in range(n):
        req = RequestView(f"q{i}", 0.5 * i, 100 + 50 * i)
        router.route(req, cluster, 0.5 * i)
        req.output_len = 9
        router.on_finish(req, 0.5 * i + 1)
