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
