"""The plugin's own settings, parsed from ``--scheduler-plugin`` and the ``--cascade-*`` flags.

Imports no sglang: tests and the benchmark build configs directly.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import Any

from ..policies import registry


def scheduler_choices() -> list[str]:
    """Instance-scheduler names ``--scheduler-plugin`` accepts (the registry's table)."""
    from ..testing.probe_policy import ensure_registered

    ensure_registered()
    return sorted(registry.INSTANCE_SCHEDULERS)


def check_scheduler_name(value: str) -> str:
    """argparse ``type=``: accept ``name`` or ``name:k=v,...`` whose base is registered."""
    base = value.split(":", 1)[0]
    choices = scheduler_choices()
    if base not in choices:
        raise argparse.ArgumentTypeError(
            f"unknown scheduler plugin {value!r}; choose one of: {', '.join(choices)} "
            f"(optionally with options, e.g. 'cascade:pipelining=0')"
        )
    return value


def parse_options(text: str | None) -> dict[str, Any]:
    """``"pipelining=0,aligned=1"`` -> ``{"pipelining": 0, "aligned": 1}`` (numbers parsed)."""
    if not text:
        return {}
    out: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        if "=" not in item:
            raise ValueError(f"--cascade-options item {item!r} is not key=value")
        _, opts = registry.parse_variant("x:" + item)
        out.update(opts)
    return out


@dataclass
class PluginConfig:
    """Everything the plugin needs in the scheduler process (travels on ``server_args``)."""

    scheduler: str  # registry name, may carry options: "cascade:pipelining=0"
    options: dict[str, Any] = field(default_factory=dict)  # extra policy options (--cascade-options)
    instance_id: int = 0
    cost_model: str = "llama-3-8b:h100"  # "<model>:<gpu>[:tp]" names for core.CostModel.for_names
    aligned_decode: bool = True  # apply the plan's decode subsets (split / rejoin the running batch)
    keep_held_state: bool = True  # hold back a filtered copy of the batch (state kept) where safe, not a rebuild
    host_kv_tokens: int = 0  # host-memory KV budget (tokens) for parked requests; parks beyond it recompute
    publish_addr: str | None = None  # zmq PUB bind address, e.g. "tcp://127.0.0.1:5601"; None = off
    publish_interval: float = 0.05  # seconds between load publications
    stats_file: str | None = None  # JSON counters written at every publication tick
    log_interval: int = 0  # scheduler steps between counter log lines (0 = only at errors)
    fail_every: int = 0  # testing: the policy raises on every N-th call (0 = never)
    # results processed without a freed request row skip the finished-request scan, except every N-th
    # (finishes that keep their row: streaming sessions; or free it later: async KV offload); 1 = every step
    finish_scan_every: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PluginConfig":
        return cls(**d)

    def cost_model_names(self) -> tuple[str, str, int]:
        parts = self.cost_model.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"--cascade-cost-model {self.cost_model!r} must be '<model>:<gpu>[:tp]'")
        tp = int(parts[2]) if len(parts) == 3 else 1
        return parts[0], parts[1], tp


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags the plugin adds to ``python -m sglang.launch_server``."""
    g = parser.add_argument_group("sglang-cascade scheduler plugin")
    choices = scheduler_choices()
    g.add_argument(
        "--scheduler-plugin", type=check_scheduler_name, default=None,
        metavar="{" + ",".join(choices) + "}",
        help="Run this sglang-cascade instance scheduler inside SGLang's scheduler (name or "
        "name:k=v,...). Choices: " + ", ".join(choices) + ". Unset: stock SGLang scheduling.",
    )
    g.add_argument("--cascade-options", type=str, default="",
                   help="Extra policy options as k=v,k=v (e.g. 'pipelining=0,aligned=1').")
    g.add_argument("--cascade-instance-id", type=int, default=0, help="Instance id used in published loads.")
    g.add_argument("--cascade-cost-model", type=str, default="llama-3-8b:h100",
                   help="'<model>:<gpu>[:tp]' spec names for the policy's cost model.")
    g.add_argument("--cascade-aligned-decode", type=int, choices=[0, 1], default=1,
                   help="1: decode only the subset the policy plans (rest keeps its KV and waits).")
    g.add_argument("--cascade-keep-held-state", type=int, choices=[0, 1], default=1,
                   help="1: hold back requests as a filtered copy of the running batch where the batch has no "
                   "shared per-batch state (penalties, logit bias, custom processors), merged back next step; "
                   "0: always rebuild their batch on rejoin.")
    g.add_argument("--cascade-host-kv-tokens", type=int, default=0,
                   help="Host-memory KV budget (tokens) for parked requests: a parked request's KV is "
                   "copied to host memory and back on resume (no recompute); parks beyond the budget "
                   "are recomputed on resume (see docs/plugin.md).")
    g.add_argument("--cascade-publish-addr", type=str, default=None,
                   help="zmq PUB address to publish load messages on, e.g. tcp://127.0.0.1:5601.")
    g.add_argument("--cascade-publish-interval", type=float, default=0.05, help="Seconds between publications.")
    g.add_argument("--cascade-stats-file", type=str, default=None, help="Write plugin counters (JSON) here.")
    g.add_argument("--cascade-log-interval", type=int, default=0, help="Steps between counter log lines.")
    g.add_argument("--cascade-finish-scan-every", type=int, default=32,
                   help="Look for finished requests in every N-th batch result even when no request row was "
                   "freed while SGLang processed it (finishes that keep their row, e.g. streaming sessions, are "
                   "reported at most N steps late); 1: scan every result.")
    g.add_argument("--cascade-fail-every", type=int, default=0,
                   help="Testing: make the policy raise on every N-th call (0 = never).")


PLUGIN_DESTS = (
    "scheduler_plugin", "cascade_options", "cascade_instance_id", "cascade_cost_model",
    "cascade_aligned_decode", "cascade_keep_held_state", "cascade_host_kv_tokens", "cascade_publish_addr",
    "cascade_publish_interval", "cascade_stats_file", "cascade_log_interval", "cascade_fail_every",
    "cascade_finish_scan_every",
)


def config_from_namespace(ns: argparse.Namespace) -> PluginConfig | None:
    """The plugin config the parsed flags describe, or None when ``--scheduler-plugin`` is unset."""
    name = getattr(ns, "scheduler_plugin", None)
    if not name:
        return None
    return PluginConfig(
        scheduler=name,
        options=parse_options(getattr(ns, "cascade_options", "")),
        instance_id=ns.cascade_instance_id,
        cost_model=ns.cascade_cost_model,
        aligned_decode=bool(ns.cascade_aligned_decode),
        keep_held_state=bool(getattr(ns, "cascade_keep_held_state", 1)),
        host_kv_tokens=ns.cascade_host_kv_tokens,
        publish_addr=ns.cascade_publish_addr,
        publish_interval=ns.cascade_publish_interval,
        stats_file=ns.cascade_stats_file,
        log_interval=ns.cascade_log_interval,
        fail_every=ns.cascade_fail_every,
        finish_scan_every=max(1, int(getattr(ns, "cascade_finish_scan_every", 32))),
    )
