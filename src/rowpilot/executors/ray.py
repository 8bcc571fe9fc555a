"""The Ray executor: long-lived Ray actors as workers, on one machine or a cluster.

Built on Ray Core (actors), not Ray Data: the driver stays the one authority for the
limits, the budget and the journal, as with worker processes (``executors.remote``).
Each actor hosts a ``WorkerHost`` (``executors.worker``); the driver sends it batches of
items with ``deliver`` and long-polls ``collect`` for what comes back, so there is never
one remote call per item.

Ray's own retries are off (``max_restarts=0``, ``max_task_retries=0``): a retry behind
the driver's back could repeat a paid call. When an actor dies (killed, its node lost)
the driver sees its ``collect`` fail, puts its items back in the queue and starts a new
actor, exactly as for a dead worker process.

``pip install 'rowpilot[ray]'`` installs base Ray only (no ``ray[data]``: it pulls in
torch). ``--ray-address`` is ``auto`` (a running cluster), ``ray://host:10001`` (Ray
Client), or unset: a local Ray with this machine's CPUs, shut down at the end of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from typing import TYPE_CHECKING, Any

from rowpilot.errors import ConfigError
from rowpilot.executors._wire import load_task_blob, pack
from rowpilot.executors.remote import LinkOwner, RemoteExecutor

if TYPE_CHECKING:
    from rowpilot.tasks.base import Task


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray, which is not installed",
            hint="pip install 'rowpilot[ray]'",
        ) from None
    return ray


class _Actor:
    """A Ray actor hosting one ``WorkerHost`` (async: its event loop runs the host)."""

    def __init__(self, blob: bytes, lanes: int) -> None:
        self._blob = blob
        self._lanes = lanes
        self._out: list[bytes] = []
        self._ready: asyncio.Event | None = None
        self._host: Any = None

    async def start(self) -> int:
        from rowpilot.executors.worker import WorkerHost

        self._ready = asyncio.Event()
        self._host = WorkerHost(load_task_blob(self._blob), self._send, lanes=self._lanes)
        return os.getpid()

    def _send(self, blob: bytes) -> None:
        self._out.append(blob)
        assert self._ready is not None
        self._ready.set()

    async def deliver(self, blob: bytes) -> None:
        self._host.deliver(blob)

    async def collect(self) -> list[bytes]:
        """What the host sent since the last call; waits up to a second for something."""
        assert self._ready is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=1.0)
        self._ready.clear()
        batch, self._out = self._out, []
        return batch


@functools.cache
def _remote_actor() -> Any:
    ray = require_ray()
    return ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(_Actor)


class RayLink:
    """One Ray actor; a driver task long-polls its ``collect`` for the messages."""

    def __init__(self, index: int, blob: bytes, lanes: int, owner: LinkOwner) -> None:
        self._ray = require_ray()
        self.actor = _remote_actor().options(name=None).remote(blob, lanes)
        self._alive = True
        self._owner = owner
        self._poll = asyncio.get_running_loop().create_task(self._serve())

    @property
    def alive(self) -> bool:
        return self._alive

    async def _serve(self) -> None:
        try:
            pid = await self.actor.start.remote()
            self._owner.received(self, pack([("ready", pid)]))
            while self._alive:
                for blob in await self.actor.collect.remote():
                    self._owner.received(self, blob)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # RayActorError and the like: the actor is gone
            if "task" in type(exc).__name__.lower() and self._alive:
                self._owner.received(self, pack([("broken", _cause(exc))]))
        self._alive = False
        self._owner.lost(self)

    def send(self, blob: bytes) -> None:
        if self._alive:
            self.actor.deliver.remote(blob)

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self._ray.kill(self.actor, no_restart=True)


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).splitlines()[0]


def connect(address: str | None, cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` or start a local Ray; True if started here."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    if address is None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            address="local",  # a new one, even where `ray start` left a cluster running
            num_cpus=cpus or os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        return True
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        if "ray[client]" in str(exc):
            raise ConfigError(
                f"--ray-address {address} is a Ray Client address, and Ray Client is not installed",
                hint="pip install 'rowpilot[ray-client]', or run the driver on the cluster "
                "with --ray-address auto",
            ) from exc
        raise ConfigError(
            f"cannot reach the Ray cluster at {address}: {exc}",
            hint="start one with `ray start --head`, or leave --ray-address out for a local Ray",
        ) from exc
    return False


def cluster_cpus() -> int:
    ray = require_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


class RayExecutor(RemoteExecutor):
    """Actors on the Ray cluster; a local Ray it started is shut down on close."""

    def __init__(self, task: Task, workers: int, *, max_crashes: int, started_here: bool) -> None:
        super().__init__(task, RayLink, workers=workers, max_crashes=max_crashes, kind="Ray actors")
        self._started_here = started_here

    def close(self) -> None:
        super().close()
        if self._started_here:
            require_ray().shutdown()
