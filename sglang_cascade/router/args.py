"""Command-line flags: sglang_router.launch_router's core flags (same names, same defaults) plus ours.

Flags of sglang_router 0.3.2 that this router does not implement (PD disaggregation, Kubernetes discovery,
history backends, auth, TLS, ...) are recognised and rejected with a message saying so; anything else
unknown is rejected by argparse ("unrecognized arguments").
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

SGLANG_ROUTER_POLICIES = ("random", "round_robin", "power_of_two", "cache_aware")
OUR_POLICIES = ("cascade", "least_load", "llumnix", "bucket")

# sglang_router flags we recognise but do not implement, with the reason shown to the user.
UNSUPPORTED_FLAGS: dict[str, str] = {
    "--pd-disaggregation": "PD disaggregation",
    "--prefill": "PD disaggregation",
    "--decode": "PD disaggregation",
    "--prefill-policy": "PD disaggregation",
    "--decode-policy": "PD disaggregation",
    "--mini-lb": "PD disaggregation",
    "--service-discovery": "Kubernetes discovery",
    "--selector": "Kubernetes discovery",
    "--service-discovery-port": "Kubernetes discovery",
    "--service-discovery-namespace": "Kubernetes discovery",
    "--prefill-selector": "Kubernetes discovery",
    "--decode-selector": "Kubernetes discovery",
    "--enable-igw": "multi-model gateway",
    "--dp-aware": "DP-aware scheduling",
    "--history-backend": "conversation history",
    "--oracle-wallet-path": "conversation history",
    "--postgres-db-url": "conversation history",
    "--redis-url": "conversation history",
    "--backend": "OpenAI backend mode",
    "--mcp-config-path": "MCP",
    "--reasoning-parser": "parsers",
    "--tool-call-parser": "parsers",
    "--tls-cert-path": "TLS",
    "--tls-key-path": "TLS",
    "--client-cert-path": "mTLS",
    "--client-key-path": "mTLS",
    "--ca-cert-paths": "mTLS",
    "--api-key": "auth",
    "--control-plane-api-keys": "auth",
    "--jwt-issuer": "auth",
    "--enable-trace": "tracing",
    "--otlp-traces-endpoint": "tracing",
    "--assignment-mode": "manual policy",
    "--max-idle-secs": "manual policy",
}

# Values of those flags that mean "what this router does anyway" and are accepted silently.
HARMLESS_VALUES = {("--backend", ("sglang",)), ("--history-backend", ("none",)), ("--history-backend", ("memory",))}


class _Unsupported(argparse.Action):
    def __init__(self, option_strings, dest, **kw):
        kw.pop("nargs", None)
        super().__init__(option_strings, dest, nargs="*", **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        if (option_string, tuple(values or ())) in HARMLESS_VALUES:
            return
        parser.error(
            f"{option_string} is a sglang_router flag this router does not support "
            f"({UNSUPPORTED_FLAGS[option_string]}); run sglang_router.launch_router for it"
        )


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # short and clear: the full usage is 80 lines
        self.exit(2, f"{self.prog}: error: {message}\n(see {self.prog} --help)\n")


def build_parser(prog: str = "python -m sglang_cascade.router") -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="sglang_router-compatible HTTP router with cascade stages and live migration",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    _add_sglang_router_groups(p)
    _add_cascade_group(p)
    for flag in UNSUPPORTED_FLAGS:
        p.add_argument(flag, action=_Unsupported, help=argparse.SUPPRESS, dest="_unsupported_" + flag.strip("-"))
    return p


def _add_sglang_router_groups(p: argparse.ArgumentParser) -> None:
    """sglang_router's own flags, with its defaults."""
    g = p.add_argument_group("workers")
    g.add_argument("--host", default="0.0.0.0")
    g.add_argument("--port", type=int, default=30000)
    g.add_argument("--worker-urls", nargs="*", default=[])
    g.add_argument("--worker-startup-timeout-secs", type=float, default=1800)
    g.add_argument("--worker-startup-check-interval", type=float, default=30)
    g = p.add_argument_group("policy")
    g.add_argument(
        "--policy",
        default="cache_aware",
        help="random, round_robin, power_of_two, cache_aware (sglang_router)"
        " or cascade, least_load, llumnix, bucket (policies.registry); registry names may carry options "
        "('cascade:pipelining=0')",
    )
    g.add_argument("--cache-threshold", type=float, default=0.3)
    g.add_argument("--balance-abs-threshold", type=int, default=64)
    g.add_argument("--balance-rel-threshold", type=float, default=1.5)
    g.add_argument("--eviction-interval-secs", type=float, default=60)
    g.add_argument("--max-tree-size", type=int, default=67108864)
    g.add_argument("--bucket-adjust-interval-secs", type=float, default=5)
    g.add_argument("--max-payload-size", type=int, default=536870912)
    g = p.add_argument_group("logging and metrics")
    g.add_argument("--log-dir", default=None)
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "warning", "error"])
    g.add_argument(
        "--prometheus-port",
        type=int,
        default=None,
        help="also serve /metrics on this port (sglang_router's default 29000 is not bound unless given; "
        "/metrics is always on the main port)",
    )
    g.add_argument("--prometheus-host", default="0.0.0.0")
    g.add_argument("--prometheus-duration-buckets", type=float, nargs="+", default=None)
    g = p.add_argument_group("requests and backpressure")
    g.add_argument("--request-id-headers", nargs="*", default=None)
    g.add_argument("--request-timeout-secs", type=float, default=1800)
    g.add_argument("--shutdown-grace-period-secs", type=float, default=180)
    g.add_argument("--cors-allowed-origins", nargs="*", default=[])
    g.add_argument("--max-concurrent-requests", type=int, default=-1, help="-1 disables the limit")
    g.add_argument("--queue-size", type=int, default=100, help="waiting requests beyond the limit (0 = 429 at once)")
    g.add_argument("--queue-timeout-secs", type=float, default=60)
    g.add_argument("--rate-limit-tokens-per-second", type=float, default=None)
    g = p.add_argument_group("retries and circuit breaker")
    g.add_argument("--retry-max-retries", type=int, default=5)
    g.add_argument("--retry-initial-backoff-ms", type=float, default=50)
    g.add_argument("--retry-max-backoff-ms", type=float, default=30000)
    g.add_argument("--retry-backoff-multiplier", type=float, default=1.5)
    g.add_argument("--retry-jitter-factor", type=float, default=0.2)
    g.add_argument("--disable-retries", action="store_true")
    g.add_argument("--cb-failure-threshold", type=int, default=10)
    g.add_argument("--cb-success-threshold", type=int, default=3)
    g.add_argument("--cb-timeout-duration-secs", type=float, default=60)
    g.add_argument("--cb-window-duration-secs", type=float, default=120)
    g.add_argument("--disable-circuit-breaker", action="store_true")
    g = p.add_argument_group("health checks")
    g.add_argument("--health-failure-threshold", type=int, default=3)
    g.add_argument("--health-success-threshold", type=int, default=2)
    g.add_argument("--health-check-timeout-secs", type=float, default=5)
    g.add_argument("--health-check-interval-secs", type=float, default=60)
    g.add_argument("--health-check-endpoint", default="/health")
    g.add_argument("--disable-health-check", action="store_true")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--model-path", default=None)
    g.add_argument("--tokenizer-path", default=None)
    g.add_argument("--chat-template", default=None, help="accepted; chat requests are proxied unchanged")
    g.add_argument("--tokenizer-cache-enable-l0", action="store_true")
    g.add_argument("--tokenizer-cache-l0-max-entries", type=int, default=10000)
    g.add_argument("--tokenizer-cache-enable-l1", action="store_true")
    g.add_argument("--tokenizer-cache-l1-max-memory", type=int, default=52428800)


def _add_cascade_group(p: argparse.ArgumentParser) -> None:
    """Flags only sglang-cascade has."""
    g = p.add_argument_group("cascade (sglang-cascade only)")
    g.add_argument(
        "--cascade-plan",
        default=None,
        help="stage plan JSON file (from `sglang-cascade plan`); "
        "without it the cascade policy plans its stages itself (auto-plan)",
    )
    g.add_argument(
        "--auto-plan",
        action="store_true",
        help="plan stages from the policy's defaults/observations (the default when --cascade-plan is absent)",
    )
    g.add_argument("--cascade-model", default="llama-3-8b", help="cost-model model name for the policy context")
    g.add_argument("--cascade-gpu", default="h100", help="cost-model GPU name for the policy context")
    g.add_argument("--cascade-tp", type=int, default=1)
    g.add_argument(
        "--cascade-length-sample",
        default=None,
        metavar="TRACE",
        help="a trace (path or built-in name) whose (prompt, output) lengths the cascade policy plans from at start, as "
        "the simulator's policies do; without it the policy routes pooled until enough requests have finished",
    )
    g.add_argument(
        "--cascade-rate",
        type=float,
        default=None,
        help="the arrival rate (req/s) the start-up plan assumes (default: --cascade-length-sample's own rate)",
    )
    g.add_argument(
        "--policy-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra option passed to policies.registry.make_router (repeatable)",
    )
    g.add_argument(
        "--refine-interval",
        type=float,
        default=0.5,
        help="seconds between RouterPolicy.rebalance calls, unless the policy declares rebalance_interval",
    )
    g.add_argument(
        "--migration-mode",
        default="recompute",
        choices=["recompute", "kv_transfer", "auto"],
        help="how requests move between stages: recompute (destination re-prefills), kv_transfer (KV copied "
        "from the source's pool through the workers' --scheduler-plugin endpoints; falls back to recompute) "
        "or auto (per move, whichever the policy's migration planner predicts stalls less, from the stalls "
        "of this router's earlier moves once it has measured some)",
    )
    g.add_argument(
        "--kv-stage",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with kv_transfer / auto moves: ask a worker to capture the KV of a request that leaves right after "
        "its first token (a prefill-pool prompt) as its prefill ends, so the move does not wait for the worker's "
        "next batch (--no-kv-stage: every export waits for it)",
    )
    g.add_argument("--max-migrations", type=int, default=None, help="sets RouterPolicy.max_migrations (per request)")
    g.add_argument(
        "--token-count",
        default="auto",
        choices=["auto", "tokenizer", "worker", "estimate"],
        help="how prompt tokens are counted for placement: local tokenizer (--tokenizer-path/--model-path),"
        " the worker's /tokenize, or len(text)/4; auto = tokenizer if given else estimate",
    )
    g.add_argument("--load-poll-interval-secs", type=float, default=0.5, help="poll workers' /v1/loads (0 = off)")
    g.add_argument(
        "--plugin-load-endpoints",
        nargs="*",
        default=[],
        help="zmq endpoints where workers running --scheduler-plugin cascade publish their load",
    )
    g.add_argument("--replica-bind", default=None, help="zmq PUB endpoint of this replica, e.g. tcp://127.0.0.1:5601")
    g.add_argument("--replica-peers", nargs="*", default=[], help="zmq PUB endpoints of the other router replicas")
    g.add_argument("--replica-id", default=None)
    g.add_argument("--replica-publish-interval-secs", type=float, default=0.05)
    g.add_argument("--seed", type=int, default=0)


@dataclass
class RouterArgs:
    """Parsed, validated router settings (the server reads only this)."""

    host: str = "127.0.0.1"
    port: int = 30000
    worker_urls: list[str] = field(default_factory=list)
    policy: str = "round_robin"
    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    max_tree_size: int = 67108864
    log_level: str = "info"
    prometheus_host: str = "0.0.0.0"
    prometheus_port: int | None = None
    prometheus_duration_buckets: list[float] | None = None
    request_id_headers: list[str] | None = None
    request_timeout_secs: float = 1800
    max_payload_size: int = 536870912
    max_concurrent_requests: int = -1
    queue_size: int = 100
    queue_timeout_secs: float = 60
    retry_max_retries: int = 5
    retry_initial_backoff_ms: float = 50
    retry_max_backoff_ms: float = 30000
    retry_backoff_multiplier: float = 1.5
    retry_jitter_factor: float = 0.2
    disable_retries: bool = False
    cb_failure_threshold: int = 10
    cb_success_threshold: int = 3
    cb_timeout_duration_secs: float = 60
    cb_window_duration_secs: float = 120
    disable_circuit_breaker: bool = False
    health_failure_threshold: int = 3
    health_success_threshold: int = 2
    health_check_timeout_secs: float = 5
    health_check_interval_secs: float = 60
    health_check_endpoint: str = "/health"
    disable_health_check: bool = False
    worker_startup_timeout_secs: float = 1800
    model_path: str | None = None
    tokenizer_path: str | None = None
    cascade_plan: str | None = None
    cascade_model: str = "llama-3-8b"
    cascade_gpu: str = "h100"
    cascade_tp: int = 1
    cascade_length_sample: str | None = None  # trace path / name: the policy's PolicyContext.length_sample at start
    cascade_rate: float | None = None  # PolicyContext.arrival_rate at start (default: that trace's rate)
    policy_options: dict = field(default_factory=dict)
    refine_interval: float = 0.5
    migration_mode: str = "recompute"
    kv_stage: bool = True
    max_migrations: int | None = None  # None: the policy's RouterPolicy.max_migrations
    token_count: str = "auto"
    load_poll_interval_secs: float = 0.5
    plugin_load_endpoints: list[str] = field(default_factory=list)
    replica_bind: str | None = None
    replica_peers: list[str] = field(default_factory=list)
    replica_id: str | None = None
    replica_publish_interval_secs: float = 0.05
    seed: int = 0

    @property
    def max_retries(self) -> int:
        return 1 if self.disable_retries else max(1, self.retry_max_retries)


def _parse_kv(items: list[str], parser: argparse.ArgumentParser) -> dict:
    from ..core.options import parse_options_text

    out: dict = {}
    for item in items:
        try:
            out.update(parse_options_text(item, what="--policy-option"))
        except ValueError:
            parser.error(f"--policy-option expects KEY=VALUE, got {item!r}")
    return out


def parse_args(argv: list[str]) -> RouterArgs:
    parser = build_parser()
    ns = parser.parse_args(argv)
    base = ns.policy.split(":", 1)[0]
    if base == "manual":
        parser.error("--policy manual is a sglang_router policy this router does not support (routing keys)")
    if base not in SGLANG_ROUTER_POLICIES + OUR_POLICIES:
        parser.error(f"--policy {ns.policy!r}: choose one of {', '.join(SGLANG_ROUTER_POLICIES + OUR_POLICIES)}")
    if ns.cascade_plan and ns.auto_plan:
        parser.error("--cascade-plan and --auto-plan are exclusive")
    if ns.max_concurrent_requests == 0 or ns.max_concurrent_requests < -1:
        parser.error("--max-concurrent-requests must be -1 (off) or >= 1")
    if ns.max_migrations is not None and ns.max_migrations < 0:
        parser.error("--max-migrations must be >= 0")
    if ns.queue_size < 0:
        parser.error("--queue-size must be >= 0")
    for u in ns.worker_urls:
        if not u.startswith(("http://", "https://")):
            parser.error(f"worker url {u!r} must start with http:// or https://")
    if ns.cascade_rate is not None and ns.cascade_rate <= 0:
        parser.error("--cascade-rate must be > 0")
    if ns.token_count == "tokenizer" and not (ns.tokenizer_path or ns.model_path):
        parser.error("--token-count tokenizer needs --tokenizer-path or --model-path")
    kw = {k: getattr(ns, k) for k in RouterArgs.__dataclass_fields__ if hasattr(ns, k)}
    kw["worker_urls"] = [u.rstrip("/") for u in ns.worker_urls]
    kw["policy_options"] = _parse_kv(ns.policy_option, parser)
    kw["log_level"] = "warning" if ns.log_level == "warn" else ns.log_level
    return RouterArgs(**kw)
