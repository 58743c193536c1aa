"""Where cascade prefills a new request (policies/cascade.py's request path): ``route`` for a staged plan,
``pooled`` for one stage (least_load's decision with the same prefix-affinity credit, in tokens).

The candidates are its stage's members and, with spill, the members of earlier stages (``balance.entry_candidates``,
which also charges the prefill-stall term); with ``affinity`` > 0 a candidate that was sent the prompt's leading
blocks is credited the prefill seconds its radix cache would save (``prefix_affinity.affinity_credit``). The
least-pressured candidate after those penalties and credits wins (``balance.MemberPicker``).
"""

from __future__ import annotations

from ..core.costmodel import CostModel
from ..core.views import ClusterView, InstanceLoad, RequestView
from .balance import MemberPicker, PrefillTimes, entry_candidates
from .baselines import LeastLoadRouter
from .prefix_affinity import PrefixTrees, affinity_credit, saved_tokens

# Ties (an idle cluster: every load 0) go to the instance holding the fewest blocks, as sglang_router's cache_aware
# sends a new prefix to the smallest tree: least_load alone sends every tie to the first worker, whose radix cache then
# holds every session and evicts them in turn (scripts/check_prefix_affinity_live.py). Far below any real difference.
TIE_PER_BLOCK_TOKENS = 1e-6  # one stage: tokens of load per cached block
TIE_PER_BLOCK_SLO = 1e-9  # staged: pressure per cached block


class EntryDispatch:
    def __init__(self, cm: CostModel, cfg, picker: MemberPicker, n: int):
        self.cfg, self.picker = cfg, picker
        self.prefill_s = PrefillTimes(cm)  # a prompt's prefill seconds (spill_harm, affinity)
        self.trees = PrefixTrees(n, 1) if cfg.affinity > 0 else None  # sized per insert (the pool's blocks)

    def route(self, plan, k: int, req: RequestView, loads: list[InstanceLoad]) -> tuple[int, bool]:
        """(the chosen instance, whether it is a spill candidate) for a request entering stage ``k``."""
        cfg = self.cfg
        tokens = req.prompt_len - req.kv_tokens
        stall_s = self.prefill_s(tokens) if cfg.spill_harm > 0 else 0.0
        members, penalty, spill = entry_candidates(plan, k, loads, cfg, stall_s, spill=cfg.spill and cfg.migration)
        hashes = req.block_hashes if self.trees is not None else ()
        saved: dict[int, int] = {}
        if hashes:
            credit, saved = affinity_credit(
                self.trees, members, hashes, tokens, self.prefill_s, cfg.affinity, cfg.slo_ttft
            )
            penalty = penalty or {}
            for i in members:  # the credit, and the smaller cache footprint as the tie-break
                penalty[i] = penalty.get(i, 0.0) + credit.get(i, 0.0) + TIE_PER_BLOCK_SLO * len(self.trees.trees[i])
        iid = self.picker.pick(members, loads, tokens=tokens, penalty=penalty, discount=saved)
        self.remember(iid, req, loads)
        return iid, iid in spill

    def pooled(self, router: LeastLoadRouter, req: RequestView, cluster: ClusterView, loads: list[InstanceLoad]) -> int:
        """One stage: least_load's decision, with ``affinity`` > 0 its load (tokens) less ``affinity x`` the prompt
        tokens a worker's cache would save (exactly least_load's decision for a request without hashes)."""
        hashes = req.block_hashes if self.trees is not None else ()
        if not hashes:
            return router.route(req, cluster, 0.0)
        saved = saved_tokens(self.trees, range(len(self.trees.trees)), hashes, req.prompt_len - req.kv_tokens)
        credit = {
            i: self.cfg.affinity * saved.get(i, 0) - TIE_PER_BLOCK_TOKENS * len(t)
            for i, t in enumerate(self.trees.trees)
        }
        iid = router.route_credited(req, cluster, credit, saved)
        self.remember(iid, req, loads)
        return iid

    def remember(self, iid: int, req: RequestView, loads: list[InstanceLoad]) -> None:
        """The request's blocks join ``iid``'s tree, as many as the instance's pool holds (with affinity on)."""
        hashes = req.block_hashes if self.trees is not None else ()
        if not hashes:
            return
        cap = loads[iid].kv_capacity * len(hashes) // max(1, req.prompt_len) if iid < len(loads) else None
        self.trees.insert(iid, hashes, cap)
