"""The lab: run one scenario under several profiles and see the difference.

A scenario (:mod:`imscore.lab.scenario`) names devices, callers and a timeline; the runner
(:mod:`imscore.lab.runner`) plays it against the real server core — in virtual time on an
in-process network (:mod:`imscore.lab.vtime`, :mod:`imscore.lab.network`), or in real time over
loopback — with simulated user agents (:mod:`imscore.lab.agents`); the report
(:mod:`imscore.lab.report`) shows the comparison table and writes ladders and pcaps.
"""

from .runner import LabRun, StepResult, run_real, run_virtual
from .scenario import Scenario, ScenarioError, load_scenario

__all__ = [
    "LabRun",
    "Scenario",
    "ScenarioError",
    "StepResult",
    "load_scenario",
    "run_real",
    "run_virtual",
]
