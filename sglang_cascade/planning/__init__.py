"""Plan checkers: implementations of ``policies.plan_check.PlanChecker`` that need a driver (the simulator).

- ``sim_checker.SimPlanChecker``: scores candidate stage plans by simulating a replay with the shipped
  cascade router (fixed plan) and instance scheduler; synchronous.
- ``threaded.ThreadedPlanChecker``: runs any checker on one background thread (the HTTP router's, so no
  simulation runs on the request path).
- ``factory.make_sim_checker``: a SimPlanChecker wired to ``sim.simulate``.
- ``cli_plan``: ``sglang-cascade plan [--explain]``.
"""
