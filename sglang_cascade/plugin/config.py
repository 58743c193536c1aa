"""The plugin's own settings, parsed from ``--scheduler-plugin`` and the ``--cascade-*`` flags.

:class:`PluginConfig` is the one declaration: each field's metadata names its flag and help, and
:func:`add_arguments`, :data:`PLUGIN_DESTS` and :func:`config_from_namespace` are generated from it (a bool
field is a ``0/1`` flag; ``options`` is the ``k=v,...`` text of ``--cascade-options``). ``--cascade-options``
is checked against the chosen scheduler while the command line is parsed, so an unknown key stops the
launcher with a usage error before any server process starts.

Imports no sglang: tests and the benchmark build configs directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.options import parse_options_text
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


def _flag(flag: str, help: str) -> dict[str, str]:
    return {"flag": flag, "help": help}


@dataclass
class PluginConfig:
    """Everything the plugin needs in the scheduler process (travels on ``server_args``)."""

    scheduler: str = field(
        metadata=_flag(  # registry name, may carry options: "cascade:pipelining=0"
            "--scheduler-plugin",
            "Run this sglang-cascade instance scheduler inside SGLang's scheduler (name or "
            "name:k=v,...). Choices: {choices}. Unset: stock SGLang scheduling.",
        )
    )
    options: dict[str, Any] = field(
        default_factory=dict,
        metadata=_flag("--cascade-options", "Extra policy options as k=v,k=v (e.g. 'pipelining=0,aligned=1')."),
    )
    instance_id: int = field(default=0, metadata=_flag("--cascade-instance-id", "Instance id used in published loads."))
    cost_model: str = field(
        default="llama-3-8b:h100",
        metadata=_flag("--cascade-cost-model", "'<model>:<gpu>[:tp]' spec names for the policy's cost model."),
    )
    aligned_decode: bool = field(
        default=True,
        metadata=_flag(
            "--cascade-aligned-decode", "1: decode only the subset the policy plans (rest keeps its KV and waits)."
        ),
    )
    keep_held_state: bool = field(
        default=True,
        metadata=_flag(
            "--cascade-keep-held-state",
            "1: hold back requests as a filtered copy of the running batch where the "
            "batch has no shared per-batch state (penalties, logit bias, custom processors), merged back next step; "
            "0: always rebuild their batch on rejoin.",
        ),
    )
    host_kv_tokens: int = field(
        default=0,
        metadata=_flag(
            "--cascade-host-kv-tokens",
            "Host-memory KV budget (tokens) for parked requests: a parked request's KV "
            "is copied to host memory and back on resume (no recompute); parks beyond the budget are recomputed on "
            "resume (see docs/plugin.md).",
        ),
    )
    publish_addr: str | None = field(
        default=None,
        metadata=_flag(
            "--cascade-publish-addr", "zmq PUB address to publish load messages on, e.g. tcp://127.0.0.1:5601."
        ),
    )
    publish_interval: float = field(
        default=0.05, metadata=_flag("--cascade-publish-interval", "Seconds between publications.")
    )
    stats_file: str | None = field(
        default=None, metadata=_flag("--cascade-stats-file", "Write plugin counters (JSON) here.")
    )
    log_interval: int = field(default=0, metadata=_flag("--cascade-log-interval", "Steps between counter log lines."))
    finish_scan_every: int = field(
        default=32,
        metadata=_flag(
            "--cascade-finish-scan-every",
            "Look for finished requests in every N-th batch result even when no "
            "request row was freed while SGLang processed it (finishes that keep their row, e.g. streaming "
            "sessions, are reported at most N steps late); 1: scan every result.",
        ),
    )
    fail_every: int = field(
        default=0,
        metadata=_flag("--cascade-fail-every", "Testing: make the policy raise on every N-th call (0 = never)."),
    )

    def __post_init__(self) -> None:
        self.finish_scan_every = max(1, int(self.finish_scan_every))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PluginConfig:
        return cls(**d)

    def cost_model_names(self) -> tuple[str, str, int]:
        parts = self.cost_model.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"--cascade-cost-model {self.cost_model!r} must be '<model>:<gpu>[:tp]'")
        tp = int(parts[2]) if len(parts) == 3 else 1
        return parts[0], parts[1], tp


def _dest(f: dataclasses.Field) -> str:
    return f.metadata["flag"].lstrip("-").replace("-", "_")


PLUGIN_FIELDS = tuple(dataclasses.fields(PluginConfig))
PLUGIN_DESTS = tuple(_dest(f) for f in PLUGIN_FIELDS)
_TYPES = typing.get_type_hints(PluginConfig)


def _flag_default(f: dataclasses.Field) -> Any:
    """The flag's default as the command line spells it (bools as 0/1, options as text)."""
    if f.name == "scheduler":
        return None
    if f.name == "options":
        return ""
    return int(f.default) if _TYPES[f.name] is bool else f.default


def _argparse_kwargs(f: dataclasses.Field) -> dict[str, Any]:
    tp, help = _TYPES[f.name], f.metadata["help"]
    kw: dict[str, Any] = {"default": _flag_default(f), "dest": _dest(f), "help": help}
    if f.name in ("scheduler", "options"):
        kw["action"] = _CheckOptions
    if f.name == "scheduler":
        choices = scheduler_choices()
        kw.update(
            type=check_scheduler_name,
            metavar="{" + ",".join(choices) + "}",
            help=help.format(choices=", ".join(choices)),
        )
    elif tp is bool:
        kw.update(type=int, choices=[0, 1])
    else:
        kw["type"] = {int: int, float: float}.get(tp, str)
    return kw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags the plugin adds to ``python -m sglang.launch_server``."""
    g = parser.add_argument_group("sglang-cascade scheduler plugin")
    for f in PLUGIN_FIELDS:
        g.add_argument(f.metadata["flag"], **_argparse_kwargs(f))


def options_error(scheduler: str | None, options_text: str | None) -> str | None:
    """Why ``--cascade-options`` does not fit ``--scheduler-plugin`` (None when it does): the scheduler is
    built once with a throw-away context, so its factory judges the options exactly as it will at start."""
    from ..core.costmodel import CostModel

    try:
        options = parse_options_text(options_text, what="--cascade-options")
        if not scheduler:
            return None
        model, gpu, tp = PluginConfig(scheduler).cost_model_names()
        ctx = registry.PolicyContext(cost_model=CostModel.for_names(model, gpu, tp))
        registry.make_instance_scheduler(scheduler, ctx, **options)
    except (ValueError, TypeError, KeyError) as exc:
        return f"--scheduler-plugin {scheduler!r} with --cascade-options {options_text!r}: {exc}"
    return None


class _CheckOptions(argparse.Action):
    """Stores the flag, then checks the options against the scheduler; of ``--scheduler-plugin`` and
    ``--cascade-options`` the one parsed last sees both, so the check runs with the final pair."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        err = options_error(getattr(namespace, "scheduler_plugin", None), getattr(namespace, "cascade_options", ""))
        if err:
            raise argparse.ArgumentError(self, err)


def config_from_namespace(ns: argparse.Namespace) -> PluginConfig | None:
    """The plugin config the parsed flags describe, or None when ``--scheduler-plugin`` is unset."""
    if not getattr(ns, "scheduler_plugin", None):
        return None
    kw: dict[str, Any] = {}
    for f in PLUGIN_FIELDS:
        value = getattr(ns, _dest(f), _flag_default(f))
        if f.name == "options":
            value = parse_options_text(value, what="--cascade-options")
        elif _TYPES[f.name] is bool:
            value = bool(value)
        kw[f.name] = value
    return PluginConfig(**kw)
