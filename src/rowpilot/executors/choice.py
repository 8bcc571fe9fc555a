"""Which executor a job gets, and why (``rowpilot doctor`` shows the same words).

``--executor local`` (the default) runs calls in this process. ``process`` and ``ray`` run
them in workers, for tasks that can travel (``Task.portable``): a prompt task's calls are
HTTP requests made by this process's own sessions, I/O-bound, so they stay here whatever
is asked, and the choice says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from rowpilot.errors import ConfigError

if TYPE_CHECKING:
    from rowpilot._config import JobConfig
    from rowpilot.executors.base import Executor
    from rowpilot.tasks.base import Task

Kind = Literal["local", "process", "ray"]


@dataclass(frozen=True)
class ExecutorChoice:
    kind: Kind
    workers: int | None  # worker processes or Ray actors; None: the run's own --workers
    why: str

    @property
    def remote(self) -> bool:
        return self.kind != "local"


def choose_executor(config: JobConfig, task: Task) -> ExecutorChoice:
    asked = config.executor
    if asked != "ray" and (config.ray_address is not None or config.ray_workers is not None):
        flag = "--ray-address" if config.ray_address is not None else "--ray-workers"
        raise ConfigError(f"{flag} is for --executor ray", hint="add --executor ray")
    if asked == "local":
        return ExecutorChoice("local", None, _LOCAL)
    if not task.portable:
        return ExecutorChoice(
            "local",
            None,
            f"--executor {asked} was asked, but {task.describe()} makes its calls as HTTP "
            "requests from this process: I/O-bound, they gain nothing from other processes",
        )
    if asked == "process":
        count = config.workers if isinstance(config.workers, int) else (os.cpu_count() or 1)
        source = "--workers" if isinstance(config.workers, int) else "one per CPU"
        return ExecutorChoice(
            "process",
            count,
            f"{count} worker processes ({source}): CPU-bound Python runs on every core, and "
            "a call past --timeout is killed with its process",
        )
    from rowpilot.executors.ray import require_ray

    require_ray()  # not installed: say how, before anything is touched
    where = config.ray_address or "a local Ray started with this machine's CPUs"
    actors = (
        f"{config.ray_workers} actors" if config.ray_workers else "one actor per CPU in the cluster"
    )
    return ExecutorChoice("ray", config.ray_workers, f"Ray actors on {where}: {actors}")


_LOCAL = (
    "local (the default): this process; async tasks on its event loop, sync ones in "
    "threads (--executor process for CPU-bound Python)"
)


def open_executor(
    choice: ExecutorChoice, config: JobConfig, task: Task, *, threads: int
) -> Executor:
    """The executor chosen, started (worker processes spawned, the Ray cluster joined)."""
    if choice.kind == "process":
        from rowpilot.executors.process import process_executor

        assert choice.workers is not None
        return process_executor(task, choice.workers, max_crashes=config.max_attempts)
    if choice.kind == "ray":
        from rowpilot.executors.ray import RayExecutor, cluster_cpus, connect

        address = None if config.ray_address is None else config.ray_address
        started = connect(address)
        actors = choice.workers or cluster_cpus()
        return RayExecutor(task, actors, max_crashes=config.max_attempts, started_here=started)
    from rowpilot.executors.local import LocalExecutor

    return LocalExecutor(threads)
