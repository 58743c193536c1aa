"""Keeping the policy's views of one SGLang scheduler current from the events the hooks see.

The instance's lists (``inst.waiting / running / parked``) change only through a few events: requests
finish (``process_batch_result``), a prefill batch's requests join the running batch
(``get_next_batch_to_run``), requests arrive (``_add_request_to_queue``) or are admitted
(``PrefillAdder.add_one_req``). :class:`ViewSync` records them and applies them to the lists without
touching every request (C-level list operations, O(changed) Python); anything else (a park, a retraction,
an abort, an error: ``dirty``) or a size mismatch with SGLang's own lists rebuilds the lists from SGLang's
(O(n) Python). Order is kept: finished views leave their list, new ones are appended.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import filterfalse

from ..core.views import InstanceView, Phase, RequestView
from .adapter import ViewCache, _finished_reason


class ViewSync:
    def __init__(self, views: ViewCache, counters: dict[str, int]):
        self.views = views
        self.counters = counters
        self.dirty = True  # rebuild everything at the next sync
        self.joined: list = []  # requests whose prefill completed (they joined the running batch)
        self.left: set[RequestView] = set()  # views of requests that finished
        self.arrived: list = []  # requests that entered SGLang's waiting queue
        self.admitted: list = []  # requests SGLang admitted (they left the waiting queue)
        self.waiting_changed = False  # the waiting list must be refilled from SGLang's queue

    @property
    def changed(self) -> bool:
        return bool(self.dirty or self.joined or self.left or self.waiting_changed or self.arrived or self.admitted)

    def engine_running(self, batch_reqs, joined: list) -> list:
        """SGLang's running requests at the start of a step: the running batch's (finished ones included:
        SGLang drops them a little later in the step; a full rebuild filters them) plus ``joined``, the
        last prefill batch's requests that now decode. Without ``joined``, SGLang's own list is returned
        (read during this step's plan only, never modified)."""
        if not joined:
            return batch_reqs
        self.joined.extend(joined)
        return [*batch_reqs, *joined]

    def sync(
        self,
        inst: InstanceView,
        waiting: list,
        running: list,
        parked: list,
        now: float,
        on_arrival: Callable[[RequestView], None],
        force: bool = False,
    ) -> None:
        """Bring ``inst``'s lists up to date (``force``: rebuild them); ``on_arrival`` is called for every
        view seen for the first time, before it is appended (the core's contract)."""
        if force or self.dirty or not self._update(inst, waiting, running, parked, now, on_arrival):
            self.counters["view_rebuilds"] += 1
            if self.left or self.dirty:  # finished requests SGLang has not filtered out of the batch yet
                running = list(filterfalse(_finished_reason, running))
            vc = self.views
            for rv, lst in vc.build(inst, waiting, running, parked, now):
                on_arrival(rv)
                lst.append(rv)
            vc.index_rows(inst.running)
            if len(vc.views) > len(waiting) + len(running) + len(parked) + 64:
                vc.sweep({rv.rid for lst in (inst.waiting, inst.running, inst.parked) for rv in lst})
        self.joined, self.left, self.arrived, self.admitted = [], set(), [], []
        self.waiting_changed = False
        self.dirty = False

    def _update(
        self,
        inst: InstanceView,
        waiting: list,
        running: list,
        parked: list,
        now: float,
        on_arrival: Callable[[RequestView], None],
    ) -> bool:
        """Apply the recorded changes to the instance's lists, keeping their order: finished views leave the
        running list (a C-level scan each; one filtering pass when many finished), requests whose prefill
        completed join it, admissions leave the waiting list and arrivals join it. Returns False (the
        caller rebuilds everything) when the result does not match SGLang's lists in size (the running
        batch with or without the finished requests, which SGLang drops a little later in the step)."""
        vc = self.views
        n0 = len(inst.running)
        if len(self.left) > 8:
            inst.running[:] = filterfalse(self.left.__contains__, inst.running)
        else:
            for rv in self.left:
                try:
                    inst.running.remove(rv)
                except ValueError:  # it finished before it ever ran (e.g. in its prefill)
                    pass
        removed = n0 - len(inst.running)
        views = vc.views
        for req in self.joined:
            rv = views.get(req.rid)
            if rv is None or rv.phase is Phase.RUNNING:  # never seen waiting, or counted twice: rebuild
                return False
            rv.phase = Phase.RUNNING
            inst.running.append(rv)
            vc.note_row(rv)
        if not self.waiting_changed:  # admissions leave, arrivals join (SGLang's queue can be long)
            for req in self.admitted:
                rv = views.get(req.rid)
                if rv is not None:
                    try:
                        inst.waiting.remove(rv)
                    except ValueError:
                        pass
            for req in self.arrived:
                rv, is_new = vc.view_of(req, now)
                if not is_new:  # seen before (e.g. re-queued): refill the list instead
                    self.waiting_changed = True
                    break
                rv.phase = Phase.WAITING
                on_arrival(rv)
                inst.waiting.append(rv)
        if self.waiting_changed or len(inst.waiting) != len(waiting):
            new: list = []
            vc.build_list(inst.waiting, waiting, Phase.WAITING, now, new)
            for rv, lst in new:
                on_arrival(rv)
                lst.append(rv)
        n = len(inst.running)
        ok = (n == len(running) or n == len(running) - removed) and len(inst.parked) == len(parked)
        self.counters["view_updates"] += ok
        return ok
