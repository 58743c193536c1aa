"""A real run's machine speed from its own decode iterations (fidelity.step_speed), the simulator's time scale
(SimConfig.time_scale) and eval_fidelity's drift-normalized comparison built on them."""

import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import pytest

from sglang_cascade.core.hardware import hardware_profile
from sglang_cascade.core.hardware_fit import predict
from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.replay import fidelity as fid
from sglang_cascade.sim.cluster import simulate
from sglang_cascade.sim.config import SimConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _decode_log(batch: int, kv: int, seconds: float, lines: int = 12, start_iter: int = 10) -> str:
    """Back-to-back decode lines of one batch, each iteration ``seconds`` long (throughput = batch / seconds)."""
    out = []
    for i in range(lines):
        ms = 100 + round(i * seconds * 1000)
        out.append(
            f"[2026-12-04 04:10:{ms // 1000:02d}.{ms % 1000:03d}] Decode batch [{start_iter + i}], #running-req: "
            f"{batch}, #token: {kv}, token usage: 0.10, cpu graph: False, gen throughput (token/s): "
            f"{batch / seconds:.4f}, #queue-req: 0"
        )
    return "\n".join(out) + "\n"


def _predicted(batch: int, kv: int) -> float:
    coef = hardware_profile("cpu-engine")["fit"]
    return predict(coef, {"kind": "decode", "prefill": [], "batch": batch, "kv_sum": kv, "kv_max": kv / batch})


def test_step_speed_is_the_measured_over_the_predicted_decode_iteration():
    p = _predicted(4, 2000)
    speed, n = fid.step_speed([_decode_log(4, 2000, 1.3 * p)])
    assert n >= 8
    assert speed == pytest.approx(1.3, rel=0.01)
    # two servers' segments pooled: the median of their iterations
    slow, fast = _decode_log(2, 800, 1.5 * _predicted(2, 800)), _decode_log(2, 800, 0.9 * _predicted(2, 800), 13)
    speed2, n2 = fid.step_speed([slow, fast])
    assert n2 > n
    assert speed2 == pytest.approx(0.9, rel=0.02)  # 13 fast lines outnumber 12 slow ones


def _prefill_log(tokens: int, seconds: float, groups: int = 9) -> str:
    """Groups of (decode, decode, prefill): the loop between the two decode lines ran the prefill after them
    (replay.step_log.loop_seconds), taking ``seconds``; the prefill has a running request (busy iterations)."""
    out, it, t = [], 100, 0.0

    def stamp(x: float) -> str:
        ms = round(x * 1000)
        return f"[2026-12-04 04:{10 + ms // 60000:02d}:{(ms // 1000) % 60:02d}.{ms % 1000:03d}]"

    for _ in range(groups):
        out.append(
            f"{stamp(t)} Decode batch [{it}], #running-req: 1, #token: 40, token usage: 0.01, cpu graph: "
            "False, gen throughput (token/s): 100.0, #queue-req: 0"
        )
        t += seconds
        out.append(
            f"{stamp(t)} Decode batch [{it + 1}], #running-req: 1, #token: 41, token usage: 0.01, cpu graph: "
            f"False, gen throughput (token/s): {1 / seconds:.6f}, #queue-req: 1"
        )
        t += 0.01
        out.append(
            f"{stamp(t)} Prefill batch [{it + 2}], #new-seq: 1, #new-token: {tokens}, #cached-token: 0, token "
            "usage: 0.10, #running-req: 1, #queue-req: 0, #pending-token: 0, cpu graph: False, input throughput "
            "(token/s): 1000.00"
        )
        t += 0.01
        it += 3
    return "\n".join(out) + "\n"


def test_prefill_step_speed_from_prefills_between_busy_iterations():
    coef = hardware_profile("cpu-engine")["fit"]
    row = {"kind": "prefill", "prefill": [1000], "batch": 0, "kv_sum": 0, "kv_max": 0}
    speed, n = fid.step_speed([_prefill_log(1000, 1.4 * predict(coef, row))], kind="prefill")
    assert n == 9
    assert speed == pytest.approx(1.4, rel=0.01)
    # a two-request chunk (its split unknown to the log) is left out
    two = _prefill_log(1000, 5.0 * predict(coef, row), groups=3).replace("#new-seq: 1", "#new-seq: 2")
    speed2, n2 = fid.step_speed([_prefill_log(1000, 1.4 * predict(coef, row)), two], kind="prefill")
    assert n2 == 9 and speed2 == pytest.approx(1.4, rel=0.01)
    with pytest.raises(ValueError):
        fid.step_speed([""], kind="both")


def test_mixed_chunk_server_has_no_prefill_speed_but_keeps_its_decode_speed():
    """--enable-mixed-chunk: a prefill forward also decodes the running batch, whose KV the line does not give,
    so the run has no prefill speed (a mixed-chunk run measured azure_code's "prefill x3.4" this way); its
    decode lines still time decode iterations."""
    coef = hardware_profile("cpu-engine")["fit"]
    row = {"kind": "prefill", "prefill": [1000], "batch": 0, "kv_sum": 0, "kv_max": 0}
    log = _prefill_log(1000, 1.4 * predict(coef, row))
    assert fid.step_speed([log], kind="prefill")[1] == 9
    speed, n = fid.step_speed([log], kind="prefill", mixed_chunk=True)
    assert n == 0 and math.isnan(speed)
    p = _predicted(4, 2000)
    dec = _decode_log(4, 2000, 1.3 * p)
    assert fid.step_speed([dec], mixed_chunk=True) == fid.step_speed([dec])


def test_prefill_speed_needs_two_decode_lines_before_it_and_enough_rows():
    """A prefill right after another prefill is not timed (the gap before it may be that prefill's loop), and
    fewer than min_steps usable rows give no speed."""
    coef = hardware_profile("cpu-engine")["fit"]
    row = {"kind": "prefill", "prefill": [1000], "batch": 0, "kv_sum": 0, "kv_max": 0}
    log = _prefill_log(1000, 1.4 * predict(coef, row))
    # each group's second decode line turned into a (single-request) prefill line: no prefill row is timed
    lines = log.splitlines()
    for i in range(1, len(lines), 3):  # same timestamp and iteration number, now a prefill line
        stamp, it = lines[i].split("]")[0] + "]", lines[i].split("[")[2].split("]")[0]
        rest = lines[i + 1].split("] ", 1)[1].split("]", 1)[1]
        lines[i] = f"{stamp} Prefill batch [{it}]{rest}"
    both = "\n".join(lines) + "\n"
    assert fid.step_speed([both], kind="prefill", min_steps=1)[1] == 0
    # the same log read without the rule times those prefills (the gap before them was a prefill's loop)
    from sglang_cascade.replay.step_log import step_rows

    assert any(r["kind"] == "prefill" for r in step_rows(both.splitlines()))
    assert not any(r["kind"] == "prefill" for r in step_rows(both.splitlines(), prefill_between_decodes=True))
    few = _prefill_log(1000, 1.4 * predict(coef, row), groups=3)
    speed, n = fid.step_speed([few], kind="prefill")
    assert n == 3 and math.isnan(speed)
    assert fid.step_speed([few], kind="prefill", min_steps=3)[0] == pytest.approx(1.4, rel=0.01)


def test_run_time_scale_from_a_runs_step_speeds():
    assert fid.run_time_scale(1.2, 0.9) == (1.2, 0.9)
    assert fid.run_time_scale(1.2, float("nan")) == 1.2 and fid.run_time_scale(1.2) == 1.2
    assert fid.run_time_scale(float("nan"), 0.9) is None and fid.run_time_scale(None) is None
    assert fid.run_time_scale(0.0, 0.9) is None and fid.run_time_scale(1.2, -1.0) == 1.2


def test_step_speed_without_decode_lines_is_nan():
    speed, n = fid.step_speed(["no batch lines here\n"])
    assert n == 0 and math.isnan(speed)


def test_time_scale_stretches_every_iteration():
    trace = [TraceRequest("a", 0.0, 300, 20)]
    cfg = SimConfig(model="tiny-llama", gpu="cpu-engine", instances=1, max_new_tokens_from_trace=True)
    base = simulate(trace, cfg).requests[0]
    slow = simulate(trace, dataclasses.replace(cfg, time_scale=1.5)).requests[0]
    assert slow.finish_time - slow.arrival == pytest.approx(1.5 * (base.finish_time - base.arrival), rel=1e-9)
    assert slow.first_token_time - slow.arrival == pytest.approx(1.5 * (base.first_token_time - base.arrival))
    # (decode, prefill): the prefill iteration takes the second factor, the decode steps the first
    split = simulate(trace, dataclasses.replace(cfg, time_scale=(1.0, 2.0))).requests[0]
    assert split.first_token_time - split.arrival > 1.5 * (base.first_token_time - base.arrival)
    decode_base = base.finish_time - base.first_token_time
    assert split.finish_time - split.first_token_time < 1.2 * decode_base


def _eval_script():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import eval_fidelity

    return eval_fidelity


def test_drift_normalized_resim_scales_each_run_by_its_own_speed(tmp_path):
    """A recorded run with step_speed 1.0 normalizes to the raw simulation; with 1.2 every latency grows."""
    ev = _eval_script()
    real = json.loads(Path(ROOT, "docs/results/fidelity_quick_calibrated.real.json").read_text())
    key = next(k for k in real if k.endswith("/sglang"))
    args = ev.parse_args(["--quick", "--trace", key.split("/")[0]])
    cfgs = [c for c in ev.configs(args) if c.name == "sglang"]
    run = {key: {**real[key], "step_speed": 1.0}}
    raw = ev.drift_normalized(args, cfgs, {key: {**real[key], "step_speed": float("nan")}})
    assert raw == {}  # a run without a measured speed is left out
    same = ev.drift_normalized(args, cfgs, run)[key]
    trace = ev.make_trace(args, key.split("/")[0], 1.0, real[key].get("offered_rate"))
    assert same["e2e_mean"] == pytest.approx(ev.simulate(trace, cfgs[0], args)["e2e_mean"], rel=1e-12)
    slower = ev.drift_normalized(args, cfgs, {key: {**real[key], "step_speed": 1.2}})[key]
    assert slower["ttft_mean"] > same["ttft_mean"] and slower["e2e_mean"] > same["e2e_mean"]
    # a prefill speed counts, except from a mixed-chunk run (its prefill forwards carried decode rows)
    pre = {**real[key], "step_speed": 1.0, "step_speed_prefill": 3.0}
    assert ev.drift_normalized(args, cfgs, {key: pre})[key]["ttft_mean"] > same["ttft_mean"]
    mixed_args = ev.parse_args(["--quick", "--trace", key.split("/")[0], "--mixed-chunk"])
    mixed_cfgs = [c for c in ev.configs(mixed_args) if c.name == "sglang"]
    on_mixed = ev.drift_normalized(mixed_args, mixed_cfgs, {key: {**pre, "mixed_chunk": True}})[key]
    assert on_mixed["ttft_mean"] == pytest.approx(ev.simulate(trace, mixed_cfgs[0], mixed_args)["ttft_mean"], rel=1e-12)


def test_lone_step_speed_keeps_only_iterations_the_other_server_did_not_share():
    """``lone``: a server's iterations while the other one ran batches are left out (the co-run slow-down the
    simulator adds itself, SimConfig.co_run_slowdown, is not counted twice)."""
    from sglang_cascade.replay.step_log import busy_spans, merge_spans, overlaps

    p = _predicted(4, 2000)
    first = _decode_log(4, 2000, 1.0 * p, lines=6).splitlines()  # alone: from 04:10:00.100
    t_half = _decode_log(4, 2000, 1.0 * p, lines=7).splitlines()[6][:25]  # "[2026-12-04 04:10:SS.mmm]"
    # then 14 iterations 1.6x slower, stamped at t_half, while the other server ran its 4 (stamped there too)
    shared = _decode_log(4, 2000, 1.6 * p, lines=14, start_iter=16).splitlines()
    other = "\n".join(t_half + line[25:] for line in _decode_log(2, 800, _predicted(2, 800), lines=4).splitlines())
    log_a = "\n".join(first + [t_half + x[25:] for x in shared]) + "\n"
    both, n_both = fid.step_speed([log_a, other])
    lone, n_lone = fid.step_speed([log_a, other], lone=True, min_steps=1)
    assert n_lone < n_both and lone == pytest.approx(1.0, rel=0.05) and both > 1.2
    spans = busy_spans(other.splitlines())
    assert len(spans) == 1 and overlaps(spans, spans[0][0] - 1, spans[0][0]) and not overlaps(spans, 0, 1)
    assert merge_spans([(3, 4), (0, 2), (1, 2.5)]) == [(0, 2.5), (3, 4)]
