"""Per-run metrics from finished requests and instance counters (seconds everywhere)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .config import SimConfig
from .instance import SimInstance, SimRequest


class FinishedRun(Protocol):
    """What the metrics read from a finished simulation (sim.cluster.Simulator has it)."""

    finished: list[SimRequest]
    rejected: list
    admitted: int
    kv_capacity: int
    insts: Sequence[SimInstance]
    preemptions: int
    migrations: int
    migrations_aborted: int
    staged_moves: int
    rearms: int
    cm: Any  # the CostModel (the length-scaled TTFT SLO)
    parks: int
    resumes: int
    park_rejected: int
    prefix: Any  # per-instance PrefixCache list, or None (SimConfig.prefix_cache_block)


def _stats(prefix: str, x: np.ndarray, out: dict[str, Any]) -> None:
    if len(x) == 0:
        for k in ("mean", "p50", "p90", "p99"):
            out[f"{prefix}_{k}"] = None
        return
    out[f"{prefix}_mean"] = float(np.mean(x))
    p = np.percentile(x, [50, 90, 99])
    out[f"{prefix}_p50"] = float(p[0])
    out[f"{prefix}_p90"] = float(p[1])
    out[f"{prefix}_p99"] = float(p[2])


def request_arrays(reqs) -> dict[str, np.ndarray]:
    n = len(reqs)
    arrival = np.fromiter((r.arrival for r in reqs), float, n)
    first = np.fromiter((r.first_token_time for r in reqs), float, n)
    finish = np.fromiter((r.finish_time for r in reqs), float, n)
    out = np.fromiter((r.output_len for r in reqs), np.int64, n)
    prompt = np.fromiter((r.prompt_len for r in reqs), np.int64, n)
    ttft = first - arrival
    e2e = finish - arrival
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(out > 1, (finish - first) / np.maximum(out - 1, 1), 0.0)
    return {
        "arrival": arrival,
        "first": first,
        "finish": finish,
        "output": out,
        "prompt": prompt,
        "ttft": ttft,
        "e2e": e2e,
        "tpot": tpot,
    }


def ttft_slos(reqs, slo_ttft: float, scale: float, cm, chunk: int) -> np.ndarray:
    """Per request: max(``slo_ttft``, ``scale`` x its prompt's isolated prefill time on ``cm``)."""
    prompts = np.array([r.prompt_len for r in reqs], dtype=np.int64)
    iso = {int(p): cm.isolated_prefill_time(int(p), chunk) for p in np.unique(prompts)}
    return np.maximum(slo_ttft, scale * np.array([iso[int(p)] for p in prompts], dtype=float))


def latency_metrics(reqs, slo_ttft: float, slo_tpot: float, ttft_slo: np.ndarray | None = None) -> dict[str, Any]:
    """Throughput, goodput and TTFT / TPOT / E2E statistics of finished requests: anything with ``arrival``,
    ``first_token_time``, ``finish_time``, ``output_len``, ``prompt_len`` (the simulator's requests, or the
    records of a replay on a real server: ``sglang_cascade.replay``). ``ttft_slo``: one TTFT SLO per request
    (``ttft_slos``) instead of ``slo_ttft`` for all."""
    a = request_arrays(reqs)
    m: dict[str, Any] = {}
    if reqs:
        start = float(a["arrival"].min())
        end = float(a["finish"].max())
    else:
        start = end = 0.0
    span = max(end - start, 1e-9)
    out_tokens = int(a["output"].sum()) if reqs else 0
    m["duration_s"] = span
    m["output_tokens"] = out_tokens
    m["prompt_tokens"] = int(a["prompt"].sum()) if reqs else 0
    m["throughput_tok_s"] = out_tokens / span if reqs else 0.0
    m["throughput_req_s"] = len(reqs) / span if reqs else 0.0
    limit = slo_ttft if ttft_slo is None else ttft_slo
    good = (a["ttft"] <= limit) & (a["tpot"] <= slo_tpot) if reqs else np.zeros(0, bool)
    m["goodput_req_s"] = float(good.sum()) / span if reqs else 0.0
    m["slo_attainment"] = float(good.mean()) if reqs else 0.0
    m["slo_ttft"] = slo_ttft
    m["slo_tpot"] = slo_tpot
    _stats("ttft", a["ttft"], m)
    multi = a["output"] > 1
    _stats("tpot", a["tpot"][multi], m)
    _stats("e2e", a["e2e"], m)
    return m


def compute_metrics(sim: FinishedRun, cfg: SimConfig, wall_s: float) -> dict[str, Any]:
    reqs = sim.finished
    m: dict[str, Any] = {
        "requests": sim.admitted + len(sim.rejected),
        "admitted": sim.admitted,
        "completed": len(reqs),
        "rejected": len(sim.rejected),
    }
    scaled = None
    if cfg.slo_ttft_scale > 0 and reqs:
        scaled = ttft_slos(reqs, cfg.slo_ttft, cfg.slo_ttft_scale, sim.cm, cfg.max_prefill_tokens)
    m.update(latency_metrics(reqs, cfg.slo_ttft, cfg.slo_tpot, scaled))
    if cfg.slo_ttft_scale > 0:  # (absent otherwise: the metrics of runs without it are as before)
        m["slo_ttft_scale"] = cfg.slo_ttft_scale
    span = m["duration_s"]
    m["preemptions"] = sim.preemptions
    m["migrations"] = sim.migrations
    m["migrations_aborted"] = sim.migrations_aborted
    if sim.staged_moves:  # SimConfig.stage_first_kv moves (absent otherwise: metrics as before)
        m["staged_moves"] = sim.staged_moves
    evicted = getattr(sim, "waiting_kv_evicted", 0)
    if evicted:  # landed moves that waited so long their KV went (absent otherwise: metrics as before)
        m["waiting_kv_evicted"] = evicted
    m["bound_rearms"] = sim.rearms  # router plan changes that re-armed running bounds
    m["parks"] = sim.parks
    if sim.prefix is not None:  # SimConfig.prefix_cache_block (absent otherwise: metrics as before)
        hit = sum(c.hit_tokens for c in sim.prefix)
        m["prefix_hit_tokens"] = hit
        m["prefix_hit_rate"] = hit / max(1, m["prompt_tokens"])
        m["prefix_evicted_blocks"] = sum(c.evicted for c in sim.prefix)
    m["resumes"] = sim.resumes
    m["park_rejected"] = sim.park_rejected
    cap = sim.kv_capacity
    insts = sim.insts
    m["kv_capacity_tokens"] = cap
    m["kv_util_mean"] = float(sum(i.kv_area for i in insts) / (cap * span * len(insts))) if reqs else 0.0
    m["kv_util_max"] = float(max(i.max_kv_seen for i in insts) / cap)
    m["busy_frac_mean"] = float(sum(i.busy_time for i in insts) / (span * len(insts))) if reqs else 0.0
    m["iterations"] = int(sum(i.view.iteration for i in insts))
    m["settled_plans"] = int(sum(i.settled_plans for i in insts))  # plans the shared plan rules changed
    per = [0] * len(insts)
    for r in reqs:
        per[r.instance] += 1
    m["completed_per_instance"] = per
    m["instances"] = cfg.instances
    m["router"] = cfg.router
    m["scheduler"] = cfg.scheduler
    m["model"] = cfg.model
    m["gpu"] = cfg.gpu
    m["tp"] = cfg.tp
    m["publish_interval"] = cfg.publish_interval
    m["sim_wall_s"] = wall_s
    return m
