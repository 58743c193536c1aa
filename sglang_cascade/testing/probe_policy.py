"""``plugin_probe``: a small, deterministic instance scheduler that exercises every lever of the plugin.

It is a test instrument, not a serving policy: admission shortest-prompt-first with a capped KV
reservation, alternating decode halves named as groups 0 / 1 (``held_groups``, so the running batch is
split by the plugin's slot lookup and rejoined; a request keeps its group while parked, so its restore
into a new pool slot is exercised too), and parking of
every ``park_every``-th request for ``park_steps`` iterations (so requests are parked and resumed).
Pure code over core views (no sglang, no clock), registered under the name ``plugin_probe`` at runtime
by :func:`ensure_registered` (the plugin calls it before building its policy and listing its choices), so
the plugin builds it through ``policies.registry`` like any policy. It lives in ``testing/`` because it is
a test instrument; ``policies/`` never imports ``testing/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.decisions import IterationPlan, PrefillChunk
from ..core.interfaces import InstanceScheduler
from ..core.options import config_from_options
from ..core.views import InstanceView, RequestView

PROBE_NAME = "plugin_probe"


@dataclass
class ProbeConfig:
    reserve_cap: int = 64  # KV tokens reserved per request beyond its prompt (decode headroom)
    alternate_decode: int = 1  # 1: requests get groups 0, 1, 0, ... on first sight; groups decode in turn
    park_every: int = 3  # park every N-th arriving request once (0 = never park)
    park_after_tokens: int = 2  # ... once it has generated this many tokens
    park_steps: int = 3  # ... and resume it this many schedule calls later


class ProbeScheduler(InstanceScheduler):
    name = PROBE_NAME

    def __init__(self, cfg: ProbeConfig | None = None):
        self.cfg = cfg or ProbeConfig()
        self._arrivals = 0
        self._to_park: set[str] = set()
        self._parked_at: dict[str, int] = {}
        self._calls = 0
        self._grouped = 0

    def on_arrival(self, req: RequestView, inst: InstanceView, now: float) -> None:
        self._arrivals += 1
        if self.cfg.park_every and self._arrivals % self.cfg.park_every == 0:
            self._to_park.add(req.rid)

    def on_finish(self, req: RequestView, inst: InstanceView, now: float) -> None:
        self._to_park.discard(req.rid)
        self._parked_at.pop(req.rid, None)

    def _reserve(self, r: RequestView) -> int:
        left = (r.max_new_tokens - r.output_len) if r.max_new_tokens is not None else self.cfg.reserve_cap
        return max(0, min(self.cfg.reserve_cap, left))

    def schedule(self, inst: InstanceView, now: float) -> IterationPlan:
        self._calls += 1
        plan = IterationPlan()
        for r in sorted(inst.waiting, key=lambda r: (r.prompt_len, r.arrival, r.rid)):
            if r.tokens_to_prefill > 0:
                plan.prefill.append(PrefillChunk(r, r.tokens_to_prefill))
            plan.reserve[r.rid] = self._reserve(r)
        for r in inst.parked:
            if self._calls - self._parked_at.get(r.rid, self._calls) >= self.cfg.park_steps:
                plan.resume.append(r)
        running = []
        for r in inst.running:
            plan.reserve[r.rid] = self._reserve(r)
            if (
                inst.host_kv_capacity > 0
                and r.rid in self._to_park
                and r.output_len >= self.cfg.park_after_tokens
                and len(inst.running) > 1
            ):
                self._to_park.discard(r.rid)
                self._parked_at[r.rid] = self._calls
                plan.park.append(r)
            else:
                running.append(r)
        if self.cfg.alternate_decode:
            for r in running + plan.resume:
                if r.group < 0:
                    r.group = self._grouped % 2
                    self._grouped += 1
            turn = self._calls % 2
            decode = [r for r in running if r.group == turn]
            if decode and len(decode) < len(running):
                plan.decode = decode + [r for r in plan.resume if r.group == turn]
                plan.held_groups = {1 - turn}
                return plan
        plan.decode = running + plan.resume
        plan.held_groups = set()
        return plan


def make_probe_scheduler(ctx, **options) -> ProbeScheduler:
    return ProbeScheduler(config_from_options(ProbeConfig, options, what="the plugin_probe scheduler"))


def ensure_registered() -> None:
    """Add ``plugin_probe`` to the registry's scheduler table (idempotent, runtime only)."""
    from ..policies import registry

    registry.INSTANCE_SCHEDULERS.setdefault(PROBE_NAME, f"{__name__}:make_probe_scheduler")
