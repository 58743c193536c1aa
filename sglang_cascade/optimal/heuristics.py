"""Reference instance schedulers for the analysis (not deployable: they may use oracle lengths).

``ReserveScheduler`` is the no-preemption variant: FCFS, a request is admitted only when the KV it will
ever need (prompt + output - 1, from an oracle map or ``max_new_tokens``) fits next to what admitted
requests will need, so KV can never run out and nothing is ever preempted. Prefill chunks (up to the
budget) are batched together with the decodes of every running request (mixed batches).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.decisions import IterationPlan, PrefillChunk
from ..core.interfaces import InstanceScheduler
from ..core.views import InstanceView, RequestView


@dataclass
class ReserveConfig:
    oracle: dict[str, int] = field(default_factory=dict)  # rid -> true output length
    mixed: bool = True  # prefill chunks and decodes in the same iteration


class ReserveScheduler(InstanceScheduler):
    name = "reserve"

    def __init__(self, cfg: ReserveConfig):
        self.cfg = cfg
        self.reserved: dict[str, int] = {}

    def _need(self, r: RequestView) -> int:
        out = self.cfg.oracle.get(r.rid, r.max_new_tokens)
        if out is None:
            raise ValueError(f"reserve scheduler: no output length for {r.rid} (oracle or max_new_tokens)")
        return r.prompt_len + out - 1

    def schedule(self, inst: InstanceView, now: float) -> IterationPlan:
        plan = IterationPlan()
        budget = inst.max_prefill_tokens
        used = sum(self.reserved.values())
        for r in inst.waiting:  # FCFS (arrival order)
            if r.rid not in self.reserved:
                need = self._need(r)
                if used + need > inst.kv_capacity:
                    break
                self.reserved[r.rid] = need
                used += need
            n = min(budget, r.tokens_to_prefill)
            if n <= 0:
                break
            plan.prefill.append(PrefillChunk(r, n))
            budget -= n
        if self.cfg.mixed or not plan.prefill:
            plan.decode = list(inst.running)
        return plan

    def on_finish(self, req: RequestView, inst: InstanceView, now: float) -> None:
        self.reserved.pop(req.rid, None)

    def on_kv_exhausted(self, inst: InstanceView, now: float, needed: int) -> list[RequestView]:
        raise RuntimeError("reserve scheduler ran out of KV: its reservation is wrong")
