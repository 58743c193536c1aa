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
