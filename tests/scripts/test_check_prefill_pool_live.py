"""scripts/check_prefill_pool_live.py's offline parts: cascade policies move by KV transfer, per-token summary."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import check_prefill_pool_live as live


def test_cascade_policies_get_kv_transfer_unless_they_name_a_mode():
    assert live.kv_mode("least_load") == "least_load"
    assert live.kv_mode("cascade") == "cascade:mode=kv_transfer"
    assert live.kv_mode(live.POOL) == live.POOL + ",mode=kv_transfer"
    assert live.kv_mode("cascade:mode=recompute") == "cascade:mode=recompute"


def test_per_token_after_first_splits_moved_and_unmoved(tmp_path):
    p = tmp_path / "r.requests.csv"
    p.write_text(
        "policy,rid,prompt,output,moves,stall_s,how,real_ttft,sim_ttft,real_e2e,sim_e2e\n"
        "pool,r0,2000,11,1,0.2,kv_transfer/-,0.5,0.4,1.5,1.4\n"  # 1.0 s / 10 tokens real and simulated
        "pool,r1,100,5,0,0,,0.1,0.1,0.5,0.3\n"  # 0.1 real, 0.05 simulated
        "pool,r2,100,1,0,0,,0.1,0.1,0.1,0.1\n"  # one token: nothing after the first
    )
    assert live.per_token_after_first(str(p)) == [
        "pool not moved (1 requests): s per token after the first, real 0.1000, sim 0.0500",
        "pool moved (1 requests): s per token after the first, real 0.1000, sim 0.1000",
    ]


def test_the_simulated_runs_follow_the_label_and_the_co_run_option(monkeypatch):
    """A ``--no-kv-stage`` label simulates without KV staging; ``--co-run`` sets the co-run slow-downs and costs each
    iteration at its start (no fast-forward), except for the comparison run without it."""
    seen = []
    monkeypatch.setattr(live, "simulate", lambda trace, cfg: seen.append(cfg))
    monkeypatch.setattr(live, "CO_RUN", None)
    live.run_sim(live.POOL, [], {})
    live.run_sim(live.POOL + live.NO_STAGE, [], {}, overhead_s=0.2)
    assert seen[0].router == seen[1].router == live.POOL and seen[0].stage_first_kv and not seen[1].stage_first_kv
    assert seen[1].migration_overhead_s == 0.2 and seen[0].co_run_slowdown is None and seen[0].fast_forward
    monkeypatch.setattr(live, "CO_RUN", {"decode": 0.03, "decode_next_to_prefill": 0.18})
    live.run_sim("least_load", [], {})
    live.run_sim("least_load", [], {}, co_run=False)
    assert seen[2].co_run_slowdown == {"decode": 0.03, "decode_next_to_prefill": 0.18} and not seen[2].fast_forward
    assert seen[3].co_run_slowdown is None and seen[3].fast_forward


def test_the_simulated_runs_take_the_servers_schedule_policy(monkeypatch):
    """``--schedule-policy``: the simulator's engines order their queues as the servers were told to."""
    seen = []
    monkeypatch.setattr(live, "simulate", lambda trace, cfg: seen.append(cfg))
    monkeypatch.setattr(live, "CO_RUN", None)
    live.run_sim(live.POOL, [], {})
    monkeypatch.setattr(live, "ORDER", "shortest-prefill-first")
    live.run_sim(live.POOL, [], {})
    assert [c.schedule_policy for c in seen] == ["fcfs", "shortest-prefill-first"]


def test_the_lone_speed_variant_scales_by_the_iterations_run_alone(monkeypatch):
    """``--co-run`` also simulates with the time scale of the iterations the other server did not share
    (``step_speed_lone``; all iterations' when that is missing); the main run and the one without the term use all
    iterations' speed."""
    seen = []
    monkeypatch.setattr(live, "simulate", lambda trace, cfg: seen.append(cfg))
    monkeypatch.setattr(live, "CO_RUN", {"decode": 0.03, "decode_next_to_prefill": 0.18})
    real = {"step_speed": 1.3, "step_speed_prefill": 1.1, "step_speed_lone": 1.1, "step_speed_prefill_lone": 1.0}
    live.run_sim(live.POOL, [], real)
    live.run_sim(live.POOL, [], real, lone=True)
    live.run_sim(live.POOL, [], real, co_run=False, lone=True)
    live.run_sim(
        live.POOL, [], {"step_speed": 1.3, "step_speed_prefill": 1.1, "step_speed_lone": float("nan")}, lone=True
    )
    assert [c.time_scale for c in seen] == [(1.3, 1.1), (1.1, 1.0), (1.3, 1.1), (1.3, 1.1)]


def test_long_prefills_count_computed_long_prompts_and_prompts_served_from_moved_kv():
    head = "[2026-12-05 19:33:09.215] Prefill batch [1131], "
    tail = ", token usage: 0.40, #running-req: 3, #queue-req: 0, #pending-token: 0, cpu graph: False, input throughput (token/s): 4974.95"
    log = "\n".join([
        head + "#new-seq: 1, #new-token: 2603, #cached-token: 0" + tail,  # a long prompt computed
        head + "#new-seq: 1, #new-token: 1, #cached-token: 2540" + tail,  # a moved request's continuation
        head + "#new-seq: 5, #new-token: 1100, #cached-token: 0" + tail,  # five short prompts (<= 256 each)
        head + "#new-seq: 2, #new-token: 1300, #cached-token: 0" + tail,  # one long beside one short
        "[2026-12-05 19:33:09.261] Decode batch [1133], #running-req: 6, #token: 6603, token usage: 0.40, "
        "cpu graph: False, gen throughput (token/s): 83.59, #queue-req: 0",
        "[2026-12-05 19:33:09] INFO:     127.0.0.1:41992 - \"POST /generate HTTP/1.1\" 200 OK",
    ])  # fmt: skip
    assert live.long_prefills(log, 1024, 256) == (2, 1)
    assert live.queue_stats(log) == (1, 0, 0.0, 0.0)


def test_per_class_splits_prompt_class_and_moves(tmp_path):
    p = tmp_path / "r.requests.csv"
    p.write_text(
        "policy,rid,prompt,output,moves,stall_s,how,real_ttft,sim_ttft,real_e2e,sim_e2e\n"
        "pool,r0,2000,11,1,0.2,kv_transfer/-,0.5,0.4,1.5,1.4\n"
        "pool,r1,100,5,0,0,,0.2,0.1,0.6,0.3\n"
        "pool,r2,300,5,0,0,,0.4,0.1,0.8,0.5\n"
    )
    assert live.per_class(str(p), 1024) == [
        "pool long moved (1): TTFT real 0.500 sim 0.400, s/token real 0.1000 sim 0.1000, E2E real 1.500 sim 1.400",
        "pool short stayed (2): TTFT real 0.300 sim 0.100, s/token real 0.1000 sim 0.0750, E2E real 0.700 sim 0.400",
    ]


def test_recorded_reads_a_past_run_for_resim(tmp_path):
    import gzip

    out = tmp_path / "run"
    (tmp_path / "run.csv").write_text(
        "policy,metric,real,sim,rel_err,sim_copy_only,sim_no_co_run,sim_co_run_lone_speed\n"
        "least_load,e2e_mean,2.5,2.4,0.04,2.4,,\nleast_load,moves,0,0,,,,\n"
        "pool,e2e_mean,6.0,3.0,0.5,2.9,,\npool,moves,2,3,,,,\n"
    )
    (tmp_path / "run.requests.csv").write_text(
        "policy,rid,prompt,output,moves,stall_s,how,real_ttft,sim_ttft,real_e2e,sim_e2e\n"
        "least_load,r0,2000,11,0,0,,0.5,0.4,1.5,1.4\n"
        "pool,r0,2000,11,1,0.2,kv_transfer/-/staged,0.5,0.4,1.5,1.4\n"
        "pool,r1,2000,11,1,0.6,kv_transfer/-,0.5,0.4,1.5,1.4\n"
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    line = "[2026-12-05 19:33:09.{ms:03d}] Decode batch [{i}], #running-req: 2, #token: 100, token usage: 0.01, cpu graph: False, gen throughput (token/s): 80.00, #queue-req: 0"
    for s in (0, 1):
        body = ["Cache flushed"] + [line.format(ms=10 * i, i=i) for i in range(5)]
        body += ["Cache flushed"] + [line.format(ms=100 + 10 * i, i=10 + i) for i in range(5)]
        (logs / f"server_stock{s}.log.gz").write_bytes(gzip.compress("\n".join(body).encode()))
    routers, real = live.recorded(str(out), str(logs))
    assert routers == ["least_load", "pool"]
    assert real["pool"]["e2e_mean"] == 6.0 and real["pool"]["moves"] == 2 and real["least_load"]["moves"] == 0
    assert real["pool"]["move_stall_median_s"] == 0.4 and real["pool"]["staged_moves"] == 1
    assert real["least_load"]["move_stall_median_s"] == 0.0 and real["least_load"]["staged_moves"] == 0
    assert len(live.logs_by_run(str(logs))) == 2  # one run per policy, cut at the flushes
