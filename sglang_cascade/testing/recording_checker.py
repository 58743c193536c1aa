"""A plan checker that only records the jobs it is given (tests): it never answers, so the plan in force
stays, and a test inspects what the policy asked to be checked."""

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


def feed_finished(router, cluster, n: int = 8) -> None:
    """Route ``n`` requests (0.5 s apart, prompts 100, 150, ...) and finish each 1 s later with 9 output tokens:
    enough finished arrivals for a router's timer check (``min_replay`` <= n)."""
    from ..core.views import RequestView

    for i in range(n):
        req = RequestView(f"q{i}", 0.5 * i, 100 + 50 * i)
        router.route(req, cluster, 0.5 * i)
        req.output_len = 9
        router.on_finish(req, 0.5 * i + 1)
