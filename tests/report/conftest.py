"""The report tests' job: run once for the session (see reported_job.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from reported_job import CONFIG, KEY, Job, run_job

from rowpilot.simulator.server import Simulator, SimulatorConfig


@pytest.fixture(scope="session")
def report_job(
    _running_simulators: dict[SimulatorConfig, Simulator],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Job]:
    """The job, run once for the package: a budget stop, then a run to the end."""
    simulator = _running_simulators.get(CONFIG)
    if simulator is None:
        simulator = _running_simulators[CONFIG] = Simulator(CONFIG)
        simulator.start_in_thread()
    else:
        simulator.reset()
    before = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = KEY
    try:
        state = tmp_path_factory.mktemp("report") / "state"
        first = run_job(simulator, state, budget=0.0009)
        second = run_job(simulator, state)
        yield Job(state, simulator, first, second)
    finally:
        if before is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = before
