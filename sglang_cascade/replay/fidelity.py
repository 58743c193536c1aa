"""Simulator fidelity: the same requests replayed on real servers and simulated, compared metric by metric.

``scripts/eval_fidelity.py`` runs the real side (CPU-engine SGLang servers, our router) and calls
:func:`simulate_config` for the simulated side; :func:`compare` and :func:`summary` make the table.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field

from ..core.hardware import hardware_profile
from ..core.traces import TraceRequest

METRICS = (
    "ttft_mean",
    "ttft_p50",
    "ttft_p99",
    "tpot_mean",
    "tpot_p50",
    "tpot_p99",
    "e2e_mean",
    "e2e_p50",
    "e2e_p99",
    "throughput_tok_s",
    "goodput_req_s",
    "preemptions",
)
COUNTS = ("preemptions",)  # reported in the table; in the error summary only where the real count is >= MIN_COUNT
MIN_COUNT = 5
RANK_KEYS = ("e2e_mean", "throughput_tok_s")  # the configurations are ranked on these
TIE = 0.03  # configurations whose real values differ by less than this (relative) are tied in the ranking


SCHEDULE_POLICY_ARG = "--schedule-policy"  # SGLang's waiting-queue order (policies/sglang_order.py)
MIXED_CHUNK_ARG = "--enable-mixed-chunk"  # SGLang's flag: a forward may run prefill chunks and decode together


@dataclass
class FidelityConfig:
    """One deployment, run for real and simulated."""

    name: str
    instances: int = 1
    router: str = "round_robin"  # simulator router; the real router's --policy (unused with one instance)
    scheduler: str = "sglang"  # simulator scheduler; "cascade" = the real server runs --scheduler-plugin cascade
    rate_scale: float = 1.0
    server_args: list[str] = field(default_factory=list)


def sim_config(
    cfg: FidelityConfig,
    model: str,
    gpu: str,
    slo_ttft: float,
    slo_tpot: float,
    publish: float,
    result_lag: bool | None = None,
    time_scale: float | tuple[float, float] = 1.0,
):
    """``result_lag`` None: the hardware profile's default (SimConfig.result_lag); ``time_scale``:
    SimConfig.time_scale (a run's :func:`step_speed`)."""
    from ..sim.config import SimConfig

    prof = hardware_profile(gpu) or {}
    return SimConfig(
        model=model,
        gpu=gpu,
        instances=cfg.instances,
        router=cfg.router,
        scheduler=cfg.scheduler,
        slo_ttft=slo_ttft,
        slo_tpot=slo_tpot,
        max_prefill_tokens=int(prof.get("chunked_prefill_size", 8192)),
        max_new_tokens_from_trace=True,
        publish_interval=publish,
        result_lag=result_lag,
        time_scale=time_scale,
        mixed_chunk=MIXED_CHUNK_ARG in cfg.server_args,
        schedule_policy=server_arg(cfg.server_args, SCHEDULE_POLICY_ARG) or "fcfs",
        prefix_cache_block=0,  # the replay's prompts are random token ids: the real radix cache reuses nothing
    )


def server_arg(server_args: list[str], flag: str) -> str | None:
    """The value a server argument list gives ``flag`` (``--flag v`` or ``--flag=v``; the last wins), or None."""
    value = None
    for i, a in enumerate(server_args):
        if a == flag and i + 1 < len(server_args):
            value = server_args[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def simulate_config(
    trace: list[TraceRequest],
    cfg: FidelityConfig,
    model: str = "tiny-llama",
    gpu: str = "cpu-engine",
    slo_ttft: float = 2.0,
    slo_tpot: float = 0.1,
    publish: float = 0.5,
    result_lag: bool | None = None,
    time_scale: float | tuple[float, float] = 1.0,
    per_request: bool = False,
) -> dict | list:
    """The simulated side of one configuration: its metrics, or with ``per_request`` its finished requests
    (the per-request comparison of scripts/diag_fidelity_gap.py)."""
    from ..sim.cluster import simulate

    res = simulate(trace, sim_config(cfg, model, gpu, slo_ttft, slo_tpot, publish, result_lag, time_scale))
    return res.requests if per_request else res.metrics


def step_speed(
    log_segments: list[str],
    gpu: str = "cpu-engine",
    model: str = "tiny-llama",
    kind: str = "decode",
    mixed_chunk: bool = False,
    min_steps: int = 5,
    lone: bool = False,
) -> tuple[float, int]:
    """How fast the machine ran during a real run, against its calibration: the median over the run's ``kind``
    iterations (SGLang's per-step log lines, ``--decode-log-interval 1``; replay.step_log.step_rows; prefill
    rows only of one request, right after two decode lines, so no idle time and no other prefill's loop is in
    them) of the measured time
    over what the hardware profile's fit predicts for that batch (> 1: slower). Returns (speed, iterations
    used); (nan, 0) when the log has none. A shared VM drifts by 10-50% over minutes (docs/fidelity.md), so
    one calibration does not describe every run, and decode (memory and overhead bound) and prefill
    (compute bound) need not drift alike. ``mixed_chunk``: the server ran with ``--enable-mixed-chunk``; its
    prefill forwards carry decode rows the log does not size, so it has no prefill speed (nan, 0). Fewer than
    ``min_steps`` usable iterations: (nan, n) (one azure_code run's only prefill row said x2.0 against x0.74
    for its 97 decode rows). ``lone``: only the iterations during which no other segment's server ran a batch
    (replay.step_log.busy_spans): the machine's speed without the co-running server's slow-down, for a simulator
    that adds that slow-down itself (SimConfig.co_run_slowdown)."""
    import math

    from ..core.hardware_fit import predict
    from .step_log import busy_spans, merge_spans, overlaps, step_rows

    if kind not in ("decode", "prefill"):
        raise ValueError(f"kind must be decode or prefill, got {kind!r}")
    prof = hardware_profile(gpu) or {}
    coef = prof.get("fit")
    if not coef:
        return math.nan, 0
    chunk = int(prof.get("chunked_prefill_size", 0)) or None
    ratios = []
    spans = [busy_spans(text.splitlines()) for text in log_segments] if lone else []
    for i, text in enumerate(log_segments):
        rows = step_rows(
            text.splitlines(), chunk=chunk, mixed_chunk=mixed_chunk, prefill_between_decodes=True, times=lone
        )
        others = merge_spans(sp for j, s in enumerate(spans) if j != i for sp in s)
        for r in rows:
            if r["kind"] != kind or r["seconds"] <= 0:
                continue
            if others and overlaps(others, r["t_end"] - r["seconds"], r["t_end"]):
                continue  # the other server was running a batch meanwhile
            if kind == "prefill" and len(r["prefill"]) != 1:
                continue  # the log gives a multi-request chunk's total only: its causal term is not known
            ratios.append(r["seconds"] / predict(coef, r, model))
    return (statistics.median(ratios) if len(ratios) >= max(1, min_steps) else math.nan), len(ratios)


def run_time_scale(decode: float | None, prefill: float | None = None) -> float | tuple[float, float] | None:
    """SimConfig.time_scale for a run that measured these :func:`step_speed` values: (decode, prefill), the
    decode speed alone where the prefill one is missing or not a speed (nan), None where the decode one is."""
    import math

    def usable(x) -> bool:
        return isinstance(x, (int, float)) and math.isfinite(x) and x > 0

    if not usable(decode):
        return None
    return (decode, prefill) if usable(prefill) else decode


def isolated_service_s(tr: TraceRequest, model: str = "tiny-llama", gpu: str = "cpu-engine") -> float:
    """The cost model's time for one request alone: its prefill, then one decode step per further token."""
    from ..core.costmodel import CostModel

    cm = CostModel.for_names(model, gpu)
    t = cm.batch_time([(tr.prompt_len, 0)])
    step = cm.batch_time((), [tr.prompt_len + tr.output_len // 2])
    return t + max(0, tr.output_len - 1) * step


def rate_for_load(trace: list[TraceRequest], load: float, model: str = "tiny-llama", gpu: str = "cpu-engine") -> float:
    """Arrival rate (req/s) at which ``load`` requests are in service on average, were each served alone
    (offered load = rate x mean isolated service time): a trace's rate scaled to the engine's capacity."""
    mean_s = statistics.fmean(isolated_service_s(r, model, gpu) for r in trace)
    return load / mean_s


def rel_err(real: float | None, sim: float | None) -> float | None:
    if real is None or sim is None:
        return None
    if real == 0.0:
        return 0.0 if sim == 0.0 else 1.0
    return abs(sim - real) / abs(real)


def compare(real: dict[str, dict], sim: dict[str, dict], metrics=METRICS) -> list[dict]:
    """One row per (configuration, metric): real, simulated, relative error."""
    rows = []
    for name in real:
        for m in metrics:
            r, s = real[name].get(m), sim[name].get(m)
            rows.append({"config": name, "metric": m, "real": r, "sim": s, "rel_err": rel_err(r, s)})
    return rows


def ranking_agrees(
    real: dict[str, dict], sim: dict[str, dict], key: str, tie: float = TIE, repeat: dict[str, dict] | None = None
) -> bool:
    """Every pair of configurations is ordered the same way by the simulator as by the real runs, except
    pairs the real runs cannot tell apart, which agree either way: within ``tie`` (relative) or, where
    ``repeat`` holds a second real run of both configurations, pairs whose two runs overlap (the range
    [min, max] of one configuration's runs meets the other's: run-to-run noise could flip their order).
    With a repeat the real order is that of the two runs' means."""
    names = list(real)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ra, rb, sa, sb = real[a][key], real[b][key], sim[a][key], sim[b][key]
            if repeat is not None and a in repeat and b in repeat:
                a2, b2 = repeat[a][key], repeat[b][key]
                if min(ra, a2) <= max(rb, b2) and min(rb, b2) <= max(ra, a2):
                    continue
                ra, rb = (ra + a2) / 2, (rb + b2) / 2
            if abs(ra - rb) <= tie * max(abs(ra), abs(rb)):
                continue
            if (ra < rb) != (sa < sb):
                return False
    return True


def _trace_groups(names, traffic: dict[str, object] | None = None) -> dict[tuple, list[str]]:
    """ "<trace>/<config>": configurations are ranked against each other within a trace; with ``traffic``
    (name -> what the configuration is offered, e.g. its server count, which sets the offered rate) only
    against configurations offered the same request stream."""
    groups: dict[tuple, list[str]] = {}
    for name in names:
        t = name.rsplit("/", 1)[0] if "/" in name else ""
        groups.setdefault((t, (traffic or {}).get(name)), []).append(name)
    return groups


def repeat_spread(real: dict[str, dict], repeat: dict[str, dict], metrics=METRICS) -> dict[str, float]:
    """Run-to-run noise of the real side: per metric, the median over the configurations both runs have of
    |run1 - run2| / mean(run1, run2)."""
    out = {}
    for m in metrics:
        d = [
            abs(real[k][m] - repeat[k][m]) / ((abs(real[k][m]) + abs(repeat[k][m])) / 2)
            for k in real
            if k in repeat
            and real[k].get(m) is not None
            and repeat[k].get(m) is not None
            and (real[k][m] or repeat[k][m])
        ]
        if d:
            out[m] = statistics.median(d)
    return out


def summary(
    rows: list[dict],
    real: dict[str, dict],
    sim: dict[str, dict],
    repeat: dict[str, dict] | None = None,
    traffic: dict[str, object] | None = None,
) -> dict:
    """Error summary. ``ranking``: all configurations of a trace ranked together. With ``repeat`` (a second
    real run of some of the configurations) also the ranking with run-to-run noise taken into account
    (``ranking_agrees_beyond_noise``) and the real side's own spread; with ``traffic`` (name -> offered
    stream, see _trace_groups) also the ranking among configurations serving the same requests at the same
    rate only (``ranking_same_traffic``; ``..._beyond_noise`` with a repeat): the choice a user makes."""
    rows = [r for r in rows if r["metric"] not in COUNTS or (r["real"] or 0) >= MIN_COUNT]
    errs = [r["rel_err"] for r in rows if r["rel_err"] is not None]
    per_metric = {}
    for m in {r["metric"] for r in rows}:
        e = [r["rel_err"] for r in rows if r["metric"] == m and r["rel_err"] is not None]
        if e:
            per_metric[m] = statistics.fmean(e)

    def ranks(rep, tr=None):
        groups = _trace_groups(real, tr).values()
        return {
            k: all(ranking_agrees({n: real[n] for n in g}, {n: sim[n] for n in g}, k, repeat=rep) for g in groups)
            for k in RANK_KEYS
        }

    out = {
        "configs": len(real),
        "median_rel_err": statistics.median(errs) if errs else None,
        "max_metric_mean_err": max(per_metric.values()) if per_metric else None,
        "ranking_agrees": all(ranks(None).values()),
        "ranking": ranks(None),
        "per_metric_mean_err": dict(sorted(per_metric.items())),
    }

    def by_trace(rep) -> dict:
        return {
            t: {k: ranking_agrees({n: real[n] for n in g}, {n: sim[n] for n in g}, k, repeat=rep) for k in RANK_KEYS}
            for (t, _), g in sorted(_trace_groups(real).items())
        }

    out["ranking_by_trace"] = by_trace(None)
    if repeat:
        r = ranks(repeat)
        out.update(
            ranking_agrees_beyond_noise=all(r.values()),
            ranking_beyond_noise=r,
            ranking_beyond_noise_by_trace=by_trace(repeat),
            repeated_configs=sum(k in repeat for k in real),
            repeat_spread=repeat_spread(real, repeat, RANK_KEYS),
        )
    if traffic:
        out["ranking_same_traffic"] = ranks(None, traffic)
        if repeat:
            out["ranking_same_traffic_beyond_noise"] = ranks(repeat, traffic)
    return out


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["config", "metric", "real", "sim", "rel_err"])
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def read_real_csv(path: str) -> dict[str, dict]:
    """The real side of a previous run from its ``write_csv`` output: ``{config: {metric: real}}``."""
    real: dict[str, dict] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"config", "metric", "real"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: not a fidelity CSV (needs the columns config, metric, real)")
        for row in reader:
            v = row["real"]
            real.setdefault(row["config"], {})[row["metric"]] = float(v) if v not in ("", "None") else None
    if not real:
        raise ValueError(f"{path}: no rows")
    return real


def markdown_table(rows: list[dict], metrics=METRICS) -> str:
    """Configurations as rows; per metric 'real / sim (error)'."""
    names = list(dict.fromkeys(r["config"] for r in rows))
    by = {(r["config"], r["metric"]): r for r in rows}
    head = "| config | " + " | ".join(metrics) + " |"
    lines = [head, "|" + "---|" * (len(metrics) + 1)]
    for n in names:
        cells = []
        for m in metrics:
            r = by.get((n, m))
            if r is None or r["real"] is None or r["sim"] is None:
                cells.append("-")
                continue
            cells.append(f"{r['real']:.3g} / {r['sim']:.3g} ({100 * r['rel_err']:.0f}%)")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
