"""Plan checkers: implementations of ``policies.plan_check.PlanChecker`` that need a driver (the simulator).

- ``sim_checker.SimPlanChecker``: scores candidate stage plans by simulating a replay with the shipped
  cascade router (fixed plan) and instance scheduler; synchronous.
- ``process.ProcessPlanChecker``: a SimPlanChecker in one niced "spawn" child process (the HTTP router's
  default: no simulation on the request path, no GIL shared with it).
- ``threaded.ThreadedPlanChecker``: runs any checker on one background thread of the router process
  (``SGLANG_CASCADE_PLAN_CHECK_MODE=thread``).
- ``background.BackgroundChecker``: the pending-job slot, worker thread and results list both share.
- ``factory.make_sim_checker``: a SimPlanChecker wired to ``sim.simulate``; ``factory.make_background_checker``:
  the router's (process or thread).
- ``cli_plan``: ``sglang-cascade plan`` (``policies.cli_plan``) with ``--check``: the checked start-up plan.
"""
