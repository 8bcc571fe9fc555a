"""The process executor: worker processes of this machine, for CPU-bound tasks.

Threads take turns on one core for pure-Python work (the GIL); processes do not. Each
worker is a new interpreter (no copy of the driver's threads, locks or open registry)
that loads the task once and runs the items the driver sends it (``executors.worker``),
talking over a socket. Only the driver writes the registry.

Unlike a thread, a process can be stopped: a sync call past ``--timeout`` is reported by
its worker and the worker is killed (SIGKILL) and replaced. A worker's pipe closes when the
driver dies, even by SIGKILL, and the worker then exits: no worker outlives its run.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from rowpilot.executors.remote import LinkOwner, RemoteExecutor

if TYPE_CHECKING:
    from rowpilot.tasks.base import Task


class ProcessLink:
    """One worker process and the socket to it; its messages reach ``owner`` on the loop.

    Started with ``subprocess`` rather than ``multiprocessing``: a spawned interpreter
    that imports only rowpilot, not the user's main script again (no ``__main__`` guard
    needed), and that gets the task itself over the socket, pickled by value."""

    def __init__(self, index: int, blob: bytes, lanes: int, owner: LinkOwner) -> None:
        loop = asyncio.get_running_loop()
        mine, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rowpilot.executors.worker", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._pipe = Connection(mine.detach())
        self._alive = True
        self._write_lock = threading.Lock()
        self.send(pickle.dumps((blob, lanes)))

        def read() -> None:
            # RuntimeError: the run's loop closed while the worker still spoke (killed at
            # the run's end): nobody is left to hear it.
            with contextlib.suppress(EOFError, OSError, RuntimeError):
                while True:
                    message = self._pipe.recv_bytes()
                    loop.call_soon_threadsafe(owner.received, self, message)
            self._alive = False
            self.process.wait()  # reap it: no zombie left behind
            with contextlib.suppress(RuntimeError):  # the loop closed: the run is over
                loop.call_soon_threadsafe(owner.lost, self)

        threading.Thread(target=read, name=f"rowpilot-pipe-{index}", daemon=True).start()

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def send(self, blob: bytes) -> None:
        with self._write_lock, contextlib.suppress(OSError):  # a dead worker: its reader says
            self._pipe.send_bytes(blob)

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()


def process_executor(task: Task, workers: int, *, max_crashes: int) -> RemoteExecutor:
    """``workers`` processes of this machine, one call at a time each."""
    return RemoteExecutor(
        task, ProcessLink, workers=workers, max_crashes=max_crashes, kind="processes"
    )
