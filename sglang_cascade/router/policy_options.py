"""The router's option assembly: flags -> the options of the policy it builds, and the router settings a
built policy carries. The only place where router flags meet policy options (Placement just builds).

- sglang_router's ``cache_aware`` flags (``--cache-threshold``, ``--balance-abs-threshold``,
  ``--balance-rel-threshold``, ``--max-tree-size``) become the ``cache_aware`` policy's options of the same
  names (policies/cache_aware.py ``CacheAwareConfig``).
- ``cascade``: ``--cascade-plan FILE`` gives ``bounds``/``counts`` (when the plan is for the current number of
  workers; else the policy plans itself) and ``--migration-mode`` gives ``mode``; a ``mode`` the policy name or
  ``--policy-option`` gives instead is also the mechanism the router runs (:meth:`PolicyOptions.migration_mode`),
  so the policy never plans KV transfers a recompute router would make (or the reverse).
- Precedence: flags < options on the policy name (``cache_aware:cache_threshold=0.5``) < ``--policy-option``
  < the plan file.
- ``--max-migrations``, when given, sets ``RouterPolicy.max_migrations`` on every built policy
  (:meth:`PolicyOptions.configure`); without it the policy's own cap holds (the simulator honours the same
  attribute).
"""

from __future__ import annotations

import json
import logging

from ..core.interfaces import RouterPolicy
from ..core.options import split_name
from .args import RouterArgs

log = logging.getLogger("sglang_cascade.router")

# policy base name -> RouterArgs fields passed as options of the same name
FLAG_OPTIONS: dict[str, tuple[str, ...]] = {
    "cache_aware": ("cache_threshold", "balance_abs_threshold", "balance_rel_threshold", "max_tree_size"),
}


def load_plan(path: str) -> dict:
    """A `sglang-cascade plan` JSON ({"stages": [{"lo", "hi", "instances"}, ...]}, or the bare list) ->
    the cascade router's ``bounds``/``counts`` options."""
    try:
        with open(path) as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read cascade plan {path!r}: {e}") from e
    stages = plan.get("stages") if isinstance(plan, dict) else plan
    try:
        bounds = [int(s["hi"]) for s in stages[:-1]]
        counts = [int(s["instances"]) for s in stages]
    except (TypeError, KeyError, ValueError, IndexError) as e:
        raise ValueError(f"cascade plan {path!r} needs a 'stages' list of {{lo, hi, instances}}: {e}") from e
    if not counts:
        raise ValueError(f"cascade plan {path!r} has no stages")
    return {"bounds": "/".join(map(str, bounds)), "counts": "/".join(map(str, counts))}


class PolicyOptions:
    def __init__(self, args: RouterArgs):
        self.args = args
        self.base = split_name(args.policy)[0]
        self.plan = load_plan(args.cascade_plan) if args.cascade_plan else None  # bad file: error at startup

    def for_workers(self, n: int) -> dict:
        """Options for ``make_router(args.policy, ...)`` with ``n`` workers."""
        a = self.args
        options = {k: getattr(a, k) for k in FLAG_OPTIONS.get(self.base, ())}
        options.update(split_name(a.policy)[1])
        options.update(a.policy_options)
        if self.base == "cascade":
            options.update(self._plan_for(n))
            options["mode"] = self.migration_mode()  # the mechanism this router implements
        return options

    def migration_mode(self) -> str:
        """How this router moves requests: a cascade policy's own ``mode`` option when the policy name or
        ``--policy-option`` gives one, else ``--migration-mode``."""
        if self.base == "cascade":
            opts = {**split_name(self.args.policy)[1], **self.args.policy_options}
            if "mode" in opts:
                return str(opts["mode"])
        return self.args.migration_mode

    def _plan_for(self, n: int) -> dict:
        if self.plan is None:
            return {}
        if sum(int(c) for c in self.plan["counts"].split("/")) != n:
            log.warning(
                "cascade plan %s is for %s instances, the router has %d workers: auto-plan instead",
                self.args.cascade_plan,
                self.plan["counts"],
                n,
            )
            return {}
        return self.plan

    def configure(self, policy: RouterPolicy) -> RouterPolicy:
        """Router flags that set a built policy's declared attributes (sim and live read the same ones)."""
        if self.args.max_migrations is not None:
            policy.max_migrations = self.args.max_migrations
        return policy
