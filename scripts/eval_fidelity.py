"""Does the simulator predict real SGLang? The same requests on real CPU-engine servers and in the simulator.

    python scripts/eval_fidelity.py [--quick] [--json] [--out docs/results/fidelity]

Configurations (real side, all SGLang 0.5.23 CPU engine with the tiny model, --threads 1):
  (a) ``sglang``: one stock server;           simulated: 1 instance, scheduler ``sglang``
  (b) ``plugin_cascade``: one server with ``--scheduler-plugin cascade``;   simulated: scheduler ``cascade``
  (c) ``rr2`` / ``ll2`` / ``cascade2``: two stock servers behind ``python -m sglang_cascade.router`` with
      round_robin, least_load and cascade (fixed bounds, recompute migration, no prefill-stall term as in the
      recorded runs); simulated: 2 instances, the
      same routers, scheduler ``sglang``.
The simulator runs with ``--model tiny-llama --gpu cpu-engine`` (the measured profile), every request carrying
its output length as max_new_tokens (as the replay sends it), the server's chunked-prefill size.

The trace slice: the first requests of a built-in trace, lengths divided by ``--length-scale`` and clipped to
the context, arrivals scaled by ``--rate-scale`` (x2 for two servers). Writes ``<out>.md`` and ``<out>.csv``;
``--json`` prints one JSON object as the last line. Every server is stopped by process group at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sglang_cascade.core.costmodel import clear_caches  # noqa: E402
from sglang_cascade.core.hardware import HARDWARE_DIR_ENV  # noqa: E402
from sglang_cascade.core.traces import TraceRequest, load_trace, trace_rate  # noqa: E402
from sglang_cascade.policies.sglang_order import SCHEDULE_POLICIES  # noqa: E402
from sglang_cascade.replay import fidelity as fid  # noqa: E402
from sglang_cascade.replay.cli_replay import replay_metrics  # noqa: E402
from sglang_cascade.replay.client import ReplayConfig, replay_trace  # noqa: E402
from sglang_cascade.replay.lengths import clip_to_context, prompt_ids, scale_lengths  # noqa: E402
from sglang_cascade.replay.step_log import STALL_S, STEP_LOG_ENV, STEP_LOG_SERVER_ARGS, stalls  # noqa: E402
from sglang_cascade.testing.server_fixture import (  # noqa: E402
    ServerProcess,
    free_port,
    pin_process_group,
    stop_process_group,
)

TRACES = ("azure_conv", "azure_code", "sharegpt", "arxiv")  # the slices compared (context-clipped lengths)

MODEL, GPU, CONTEXT, VOCAB = "tiny-llama", "cpu-engine", 4096, 1024
MIXED_CHUNK_ARG = fid.MIXED_CHUNK_ARG
PLUGIN_ARGS = ["--scheduler-plugin", "cascade", "--cascade-cost-model", f"{MODEL}:{GPU}"]


def configs(args) -> list[fid.FidelityConfig]:
    """The deployments; ``rate_scale`` here is the number of servers (the rate is per server)."""
    # spill_harm=0: the dispatch the recorded real runs had (the prefill-stall term became a default later)
    cascade = f"cascade:bounds={args.cascade_bound},counts=1/1,mode=recompute,spill_harm=0"
    out = [
        fid.FidelityConfig("sglang", 1, "round_robin", "sglang", 1.0),
        fid.FidelityConfig("plugin_cascade", 1, "round_robin", "cascade", 1.0, PLUGIN_ARGS),
    ]
    if not args.single_only:
        out += [
            fid.FidelityConfig("rr2", 2, "round_robin", "sglang", 2.0),
            fid.FidelityConfig("ll2", 2, "least_load", "sglang", 2.0),
            fid.FidelityConfig("cascade2", 2, cascade, "sglang", 2.0),
        ]
    if engine_args(args):  # every server runs with them; the simulator reads them from server_args (fid.sim_config)
        out = [replace(c, server_args=[*c.server_args, *engine_args(args)]) for c in out]
    if args.config:
        unknown = set(args.config) - {c.name for c in out}
        if unknown:
            raise SystemExit(f"--config: unknown {sorted(unknown)}; known: {[c.name for c in out]}")
        out = [c for c in out if c.name in args.config]
    return out


def base_slice(args, trace_name: str):
    """The first requests of a trace, lengths / length_scale, clipped to the context (times not yet set)."""
    tr = load_trace(trace_name, num_requests=args.requests, seed=args.seed)
    tr, _ = clip_to_context(scale_lengths(tr, args.length_scale), CONTEXT)
    return tr


def make_trace(args, trace_name: str, servers: float, rate: float | None = None):
    """The slice at ``args.load`` x ``servers`` offered load (fidelity.rate_for_load on the CPU profile), or at
    ``rate`` req/s (a recorded run's offered rate, for --resim)."""
    tr = base_slice(args, trace_name)
    if rate:  # the recorded offered rate is len / last arrival (run_all): stretch the gaps to exactly that
        k = len(tr) / max(max(r.arrival for r in tr), 1e-9) / rate
    else:  # same arrival pattern, gaps stretched to the target mean rate
        k = trace_rate(tr) / fid.rate_for_load(tr, args.load * servers, MODEL, GPU)
    return [replace(r, arrival=r.arrival * k) for r in tr]


def post(url: str) -> None:
    req = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"}, method="POST")
    try:
        urllib.request.urlopen(req, timeout=30).read()
    except OSError:
        pass


def start_router(policy: str, workers: list[str], log_path: str, extra=()) -> tuple[subprocess.Popen, str]:
    port = free_port("127.0.0.1")
    cmd = [sys.executable, "-m", "sglang_cascade.router", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--worker-urls", *workers, "--policy", policy, "--log-level", "warning", "--disable-health-check"]
    cmd += ["--cascade-model", MODEL, "--cascade-gpu", GPU, *extra]
    with open(log_path, "ab") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"router exited with {p.returncode}; log {log_path}")
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                return p, url
        except OSError:
            pass
        time.sleep(0.3)
    stop_group(p)
    raise TimeoutError(f"router not ready; log {log_path}")


def stop_group(p: subprocess.Popen) -> None:
    stop_process_group(p, 20)


PROBE = (128, 16, 3)  # prompt tokens, output tokens, requests (one after another)


def probe_slowdown(targets: list[ServerProcess]) -> float:
    """Contention probe: a few requests alone on each idle server, one after another; their mean end-to-end
    time over what the CPU profile predicts for one request alone (1.0 = the machine of the calibration)."""
    prompt, out, n = PROBE
    trace = [TraceRequest(f"probe{i}", 0.1 * i, prompt, out) for i in range(n)]
    ratios = []
    for s in targets:
        for tr in trace:
            recs = asyncio.run(
                replay_trace([replace(tr, arrival=0.0)], prompt_ids([tr], VOCAB, 1), ReplayConfig(s.base_url))
            )
            if recs[0].ok:
                ratios.append((recs[0].finish_time - recs[0].arrival) / fid.isolated_service_s(tr, MODEL, GPU))
    return statistics.median(ratios) if ratios else float("nan")


def run_real(cfg: fid.FidelityConfig, trace, servers: dict[str, ServerProcess], args) -> dict:
    if cfg.scheduler == "cascade":
        targets = [servers["plugin"]]
    else:
        targets = [servers[k] for k in ("stock0", "stock1")[: cfg.instances]]
    for s in targets:
        post(s.base_url + "/flush_cache")
    slowdown = probe_slowdown(targets)
    offsets = [log_size(s) for s in targets]
    router = None
    url = targets[0].base_url
    if cfg.instances > 1:
        router, url = start_router(cfg.router, [s.base_url for s in targets], args.log_dir + f"/router_{cfg.name}.log")
    try:
        prompts = prompt_ids(trace, VOCAB, args.seed)
        recs = asyncio.run(replay_trace(trace, prompts, ReplayConfig(url), progress=not args.json))
    finally:
        if router is not None:
            stop_group(router)
    m = replay_metrics(recs, args.slo_ttft, args.slo_tpot)
    if m["failed"]:
        bad = next(r for r in recs if not r.ok)
        raise RuntimeError(f"{cfg.name}: {m['failed']} requests failed (first: {bad.error})")
    logs = [log_since(s, o) for s, o in zip(targets, offsets)]  # each server's log lines of this run
    m["preemptions"] = sum(retractions(text) for text in logs)
    m["step_speed"], m["step_speed_steps"] = fid.step_speed(logs)
    m["step_speed_prefill"], m["step_speed_prefill_steps"] = fid.step_speed(
        logs, kind="prefill", mixed_chunk=args.mixed_chunk
    )
    m["load_avg_1m"] = os.getloadavg()[0]
    m["probe_slowdown"] = slowdown
    m["stall_max_s"] = max((gap for text in logs for _, gap in stalls(text.splitlines())), default=0.0)
    return m


RETRACT = "KV cache pool is full. Retract requests"


def log_size(s: ServerProcess) -> int:
    return os.path.getsize(s.log_path) if s.log_path and os.path.exists(s.log_path) else 0


def log_since(s: ServerProcess, offset: int) -> str:
    with open(s.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def retractions(log_text: str) -> int:
    """Requests SGLang retracted (its log line '#retracted_reqs: n') in this part of a server log."""
    n = 0
    for line in log_text.splitlines():
        if RETRACT in line and "#retracted_reqs: " in line:
            n += int(line.split("#retracted_reqs: ")[1].split(",")[0])
    return n


def engine_args(args) -> list[str]:
    """Server arguments every server of the run gets (--mixed-chunk, --schedule-policy); the configurations carry
    the same (configs), so the simulator models that engine."""
    out = [MIXED_CHUNK_ARG] if args.mixed_chunk else []
    if args.schedule_policy != "fcfs":
        out += [fid.SCHEDULE_POLICY_ARG, args.schedule_policy]
    return out


def start_servers(need_plugin: bool, need_two: bool, log_dir: str, extra: list[str] = ()) -> dict[str, ServerProcess]:
    specs = {"stock0": [*extra]}
    if need_two:
        specs["stock1"] = [*extra]
    if need_plugin:
        specs["plugin"] = [*PLUGIN_ARGS, *extra]
    servers = {  # per-step log lines: the run's own machine speed (fidelity.step_speed)
        k: ServerProcess(
            ["--threads", "1", *STEP_LOG_SERVER_ARGS, *a], env=STEP_LOG_ENV, log_path=f"{log_dir}/server_{k}.log"
        )
        for k, a in specs.items()
    }
    for s in servers.values():
        s.start()
    try:
        for s in servers.values():
            s.wait_ready()
        ncpu = os.cpu_count() or 1
        for i, (k, s) in enumerate(servers.items()):  # one core each (stock0 -> 0, stock1 -> 1, plugin -> 0)
            pin_process_group(s.pid, {(0 if k == "plugin" else i) % ncpu})
    except Exception:
        for s in servers.values():
            s.stop()
        raise
    return servers


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--trace", action="append", default=None, help=f"built-in trace (repeatable; default: {', '.join(TRACES)})"
    )
    ap.add_argument("--requests", type=int, default=None, help="requests per configuration (default 120; --quick 30)")
    ap.add_argument("--length-scale", type=float, default=8.0, help="divide prompt and output lengths by this")
    ap.add_argument("--load", type=float, default=1.0, help="offered load per server (fidelity.rate_for_load)")
    ap.add_argument("--cascade-bound", type=int, default=64, help="cascade2: the stage bound (tokens)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slo-ttft", type=float, default=2.0)
    ap.add_argument("--slo-tpot", type=float, default=0.1)
    ap.add_argument("--quick", action="store_true", help="fewer requests (<= 10 minutes on 2 cores)")
    ap.add_argument("--single-only", action="store_true", help="only (a) and (b)")
    ap.add_argument(
        "--mixed-chunk",
        action="store_true",
        help=f"every server runs with SGLang's {MIXED_CHUNK_ARG} (prefill and decode in one forward), the "
        "simulator likewise (SimConfig.mixed_chunk); default: SGLang's default, a prefill batch runs alone",
    )
    ap.add_argument(
        "--schedule-policy",
        default="fcfs",
        choices=SCHEDULE_POLICIES,
        help="every server runs with SGLang's --schedule-policy (the waiting queue's order), the simulator likewise "
        "(SimConfig.schedule_policy); default fcfs, SGLang's default",
    )
    ap.add_argument(
        "--config",
        action="append",
        default=None,
        help="only this configuration (repeatable): sglang, plugin_cascade, rr2, ll2, cascade2",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    ap.add_argument("--out", default=str(ROOT / "docs/results/fidelity"), help="writes OUT.md and OUT.csv")
    ap.add_argument("--log-dir", default="/tmp/eval_fidelity_logs")
    ap.add_argument(
        "--resim",
        metavar="REAL.json|OUT.csv",
        help="no servers: take the real side from a previous run's OUT.real.json or OUT.csv (its real column; "
        "same slice arguments, the offered rate recomputed) and simulate it again",
    )
    ap.add_argument(
        "--repeat",
        metavar="REAL.json",
        help="a second real run of the same slice (another run's OUT.real.json; may hold only some of the "
        "configurations): the ranking is also judged beyond run-to-run noise (pairs whose two runs overlap are "
        "ties) and the real side's own spread is reported",
    )
    ap.add_argument(
        "--sim-result-lag",
        type=int,
        choices=(0, 1),
        default=None,
        help="simulator only: SGLang's overlap-scheduler result lag off (0) / on (1); default the profile's (on)",
    )
    ap.add_argument(
        "--calibrate",
        action="store_true",
        help="first measure this machine's CPU engine (scripts/calibrate_cpu_engine.py --pin 0, with --co-runner "
        "when a two-server configuration runs: lone fit and co-run slow-down, ~3-7 min; --quick: its quick grid) "
        "into OUT.profile.json and use it",
    )
    ap.add_argument(
        "--profile",
        default=None,
        help="a cpu-engine hardware profile JSON (calibrate_cpu_engine.py --out) to use instead of the shipped "
        "one, by this script, its servers and its routers; default: OUT.profile.json of --resim's run if present",
    )
    a = ap.parse_args(argv)
    if a.calibrate and (a.resim or a.profile):
        ap.error("--calibrate measures a new profile: not with --resim or --profile")
    a.trace = a.trace or list(TRACES)
    a.requests = a.requests or (30 if a.quick else 120)
    return a


def simulate(trace, cfg: fid.FidelityConfig, args, time_scale: float | tuple[float, float] = 1.0) -> dict:
    lag = None if args.sim_result_lag is None else bool(args.sim_result_lag)
    return fid.simulate_config(
        trace, cfg, MODEL, GPU, args.slo_ttft, args.slo_tpot, result_lag=lag, time_scale=time_scale
    )


def drift_normalized(args, cfgs, real: dict) -> dict:
    """The simulated side again, each configuration's iterations scaled by its real run's measured machine
    speed (``step_speed`` for decode iterations and, where the run measured it, ``step_speed_prefill`` for
    iterations with a prefill chunk; fidelity.step_speed): what is left of the error once the VM's drift
    between the calibration and the run is taken out. Only the runs that recorded a decode speed."""
    by_name = {c.name: c for c in cfgs}
    out = {}
    for key, m in real.items():
        # a mixed-chunk run's prefill forwards carried decode rows (fidelity.step_speed): no prefill speed
        kp = None if m.get("mixed_chunk") else m.get("step_speed_prefill")
        scale = fid.run_time_scale(m.get("step_speed"), kp)
        if scale is None:
            continue
        c, trace = recorded_slice(args, by_name, key, m)
        out[key] = simulate(trace, c, args, time_scale=scale)
    return out


def recorded_slice(args, by_name: dict, key: str, m: dict) -> tuple[fid.FidelityConfig, list]:
    """The configuration of a recorded run ``<trace>/<config>`` and its slice at the run's offered rate."""
    tname, cname = key.rsplit("/", 1)
    if cname not in by_name:
        raise SystemExit(f"--resim: {key} is not a configuration of this script")
    c = by_name[cname]
    return c, make_trace(args, tname, c.rate_scale, m.get("offered_rate"))


def resim_all(args, cfgs) -> tuple[dict, dict]:
    """Real metrics from ``args.resim`` (written by a real run), simulated again on the same slices at the
    recorded offered rates: iterate on the simulator without servers."""
    if args.resim.endswith(".csv"):
        try:
            real = fid.read_real_csv(args.resim)
        except ValueError as e:
            raise SystemExit(f"--resim: {e}") from None
    else:
        real = json.loads(Path(args.resim).read_text())
    by_name = {c.name: c for c in cfgs}
    real = {k: m for k, m in real.items() if k.rsplit("/", 1)[0] in args.trace}  # --trace narrows a resim
    if not real:
        raise SystemExit(f"--resim: {args.resim} has no configuration of the traces {args.trace}")
    sim = {}
    for key, m in real.items():
        c, trace = recorded_slice(args, by_name, key, m)
        if m.get("schedule_policy", "fcfs") != args.schedule_policy:
            raise SystemExit(
                f"--resim: {key} ran with --schedule-policy {m.get('schedule_policy', 'fcfs')}; pass the same"
            )
        if bool(m.get("mixed_chunk", False)) != args.mixed_chunk:
            raise SystemExit(
                f"--resim: {key} ran {'with' if m.get('mixed_chunk') else 'without'} {MIXED_CHUNK_ARG}; "
                f"{'drop' if args.mixed_chunk else 'add'} --mixed-chunk"
            )
        if len(trace) != m.get("completed", len(trace)):
            raise SystemExit(f"--resim: {key} has {m.get('completed')} requests, this slice {len(trace)}")
        sim[key] = simulate(trace, c, args)
        m.setdefault("offered_rate", len(trace) / max(trace[-1].arrival, 1e-9))
        sim[key]["offered_rate"] = m["offered_rate"]
    return real, sim


def run_all(args, cfgs) -> tuple[dict, dict]:
    """Real and simulated metrics keyed ``<trace>/<config>``."""
    real, sim = {}, {}
    os.makedirs(args.log_dir, exist_ok=True)
    servers = start_servers(
        any(c.scheduler == "cascade" for c in cfgs),
        any(c.instances > 1 for c in cfgs),
        args.log_dir,
        engine_args(args),
    )
    try:
        for tname in args.trace:
            for c in cfgs:
                key = f"{tname}/{c.name}"
                trace = make_trace(args, tname, c.rate_scale)
                t0 = time.monotonic()
                real[key] = run_real(c, trace, servers, args)
                real[key]["offered_rate"] = len(trace) / max(trace[-1].arrival, 1e-9)
                if args.mixed_chunk:
                    real[key]["mixed_chunk"] = True  # --resim must model the same engine
                if args.schedule_policy != "fcfs":
                    real[key]["schedule_policy"] = args.schedule_policy
                Path(args.out + ".real.json").write_text(json.dumps(real, indent=1))  # kept if a later run fails
                sim[key] = simulate(trace, c, args)
                sim[key]["offered_rate"] = real[key]["offered_rate"]
                if not args.json:
                    print(
                        f"{key}: real e2e_mean {real[key]['e2e_mean']:.3f} s, sim {sim[key]['e2e_mean']:.3f} s "
                        f"({time.monotonic() - t0:.0f} s)",
                        flush=True,
                    )
    finally:
        for s in servers.values():
            s.stop()
    return real, sim


def write_outputs(args, real, sim, rows, summ) -> None:
    fid.write_csv(rows, args.out + ".csv")
    lines = [
        "# Simulator fidelity: real SGLang CPU-engine servers vs the simulator (`--gpu cpu-engine`)",
        "",
        f"Command: `python scripts/eval_fidelity.py {' '.join(sys.argv[1:])}`",
        f"Traces: first {args.requests} requests of {', '.join(args.trace)}; lengths / {args.length_scale:g}, "
        f"clipped to {CONTEXT}; offered load {args.load:g} per server. Cells: real / simulated (relative error).",
        "",
        fid.markdown_table(rows),
        "",
        f"Summary: {json.dumps(summ)}",
        "",
        *(
            [
                f"Ranking beyond noise: judged against a second real run of {summ['repeated_configs']} of these "
                f"configurations (`--repeat {args.repeat}`): pairs whose two runs overlap are ties; "
                f"real run-to-run spread (median relative difference): {json.dumps(summ['repeat_spread'])}.",
                "",
            ]
            if "repeat_spread" in summ
            else []
        ),
        *(
            [
                f"Drift-normalized (each run's simulated iterations scaled by the machine speed measured in that run's "
                f"own decode iterations, `step_speed`, and prefill iterations where it has them, "
                f"`step_speed_prefill`): median {summ['median_rel_err_drift_normalized']:.1%}, "
                f"worst metric mean {summ['max_metric_mean_err_drift_normalized']:.1%}.",
                "",
            ]
            if "drift_normalized" in summ
            else []
        ),
        "Per real run: offered rate (req/s), 1-minute load average of the machine after it, the contention "
        "probe (end-to-end time of a lone 128+16-token request before the run over the CPU profile's prediction) "
        "and, where logged, the step speed (median decode iteration over the profile's prediction, in the run):",
        "",
        *(
            f"- {n}: {real[n]['offered_rate']:.2f} req/s, load {real[n].get('load_avg_1m', 0):.2f}, "
            f"probe x{real[n].get('probe_slowdown', float('nan')):.2f}"
            + (f", step speed x{real[n]['step_speed']:.3f}" if "step_speed" in real[n] else "")
            + (f" (prefill x{real[n]['step_speed_prefill']:.3f})" if "step_speed_prefill" in real[n] else "")
            + (
                f"; **server silent {real[n]['stall_max_s']:.1f} s with requests in hand** (no batch ran: this run's "
                "latencies are not the scheduler's; step_log.stalls)"
                if real[n].get("stall_max_s", 0.0) >= STALL_S
                else ""
            )
            for n in real
        ),
    ]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")


def load_repeat(args, real: dict) -> dict | None:
    """The --repeat run's configurations that this run also has, each checked to be the same slice."""
    if not args.repeat:
        return None
    try:
        rep = json.loads(Path(args.repeat).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"--repeat: cannot read {args.repeat}: {e}") from None
    rep = {k: m for k, m in rep.items() if k in real}
    for k, m in rep.items():
        if m.get("completed") != real[k].get("completed"):
            raise SystemExit(f"--repeat: {k} has {m.get('completed')} requests, this run {real[k].get('completed')}")
    if not rep:
        raise SystemExit(f"--repeat: {args.repeat} has no configuration of this run")
    return rep


def calibrate(args, co_run: bool) -> str:
    """This machine's profile (the CPU engine's speed is the host's: the shipped profile came from another VM);
    ``co_run``: also the slow-down with a second busy server (only two-server configurations need it), next to a
    mixed and next to a prefilling one (the profile's decode_next_to_prefill)."""
    out = args.out + ".profile.json"
    co = ["--co-runner", "--co-runner-kind", "both"] if co_run else []
    cmd = [sys.executable, str(ROOT / "scripts/calibrate_cpu_engine.py"), *co]
    cmd += ["--pin", "0"]
    cmd += ["--csv", args.out + ".calibration.csv", "--out", out, *(["--quick"] if args.quick else [])]
    if not args.json:
        print("calibrating:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if args.json else None)
    return out


def use_profile(path: str) -> None:
    """Make ``path`` the cpu-engine profile of this process and of every server and router it starts
    ($SGLANG_CASCADE_HARDWARE_DIR); the cost model's cached tables are dropped, so models built after it use it."""
    body = json.loads(Path(path).read_text())
    if str(body.get("name", "")).lower() != GPU:
        raise SystemExit(f"--profile {path}: a {GPU!r} profile is needed, this one is {body.get('name')!r}")
    d = Path(tempfile.mkdtemp(prefix="fidelity_hw_"))
    atexit.register(shutil.rmtree, d, True)  # the servers and routers that read it are stopped before exit
    (d / f"{GPU}.json").write_text(json.dumps(body))
    os.environ[HARDWARE_DIR_ENV] = str(d)
    clear_caches()


def main(argv=None) -> int:
    args = parse_args(argv)
    cfgs = configs(args)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)  # before a calibration writes OUT.profile.json
    profile = calibrate(args, any(c.instances > 1 for c in cfgs)) if args.calibrate else args.profile
    if profile is None and args.resim and args.resim.endswith(".real.json"):
        p = args.resim[: -len(".real.json")] + ".profile.json"  # the run's own calibration, if it made one
        profile = p if Path(p).exists() else None
    if profile:
        use_profile(profile)
        if not args.resim and Path(profile).resolve() != Path(args.out + ".profile.json").resolve():
            shutil.copyfile(profile, args.out + ".profile.json")  # kept with the run (a later --resim uses it)
    real, sim = resim_all(args, cfgs) if args.resim else run_all(args, cfgs)
    rows = fid.compare(real, sim)
    by_name = {c.name: c for c in cfgs}
    traffic = {k: by_name[k.rsplit("/", 1)[1]].instances for k in real}  # the offered rate scales with the servers
    summ = fid.summary(rows, real, sim, load_repeat(args, real), traffic)
    norm = drift_normalized(args, cfgs, real)
    if norm:
        nreal = {k: real[k] for k in norm}
        ns = fid.summary(fid.compare(nreal, norm), nreal, norm, None, {k: traffic[k] for k in norm})
        summ["drift_normalized"] = {
            "configs": len(norm),
            "step_speed": {k: round(real[k]["step_speed"], 4) for k in norm},
            **{k: ns[k] for k in ("median_rel_err", "max_metric_mean_err", "ranking_agrees", "per_metric_mean_err")},
        }
        summ["median_rel_err_drift_normalized"] = ns["median_rel_err"]
        summ["max_metric_mean_err_drift_normalized"] = ns["max_metric_mean_err"]
    write_outputs(args, real, sim, rows, summ)
    if args.json:
        keys = ("configs", "median_rel_err", "max_metric_mean_err", "ranking_agrees", "ranking_agrees_beyond_noise")
        keys += ("ranking_same_traffic", "ranking_same_traffic_beyond_noise")
        keys += ("median_rel_err_drift_normalized", "max_metric_mean_err_drift_normalized")
        print(json.dumps({k: summ[k] for k in keys if k in summ}))
    else:
        print(fid.markdown_table(rows))
        print(json.dumps(summ, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
