"""``asyncllm worker --processes P``: several worker processes under one parent.

For handlers that use the CPU (tokenizers, local post-processing), one event
loop per core. The parent starts P children running the same command, passes
SIGTERM and SIGINT on to them, restarts a child that dies unexpectedly, and
exits when all children have exited after a stop: 0 if every child exited 0.

A child that exits with an error within its first seconds (a wrong ``-A``, a
missing queue) would fail again at once: the parent then stops the others and
exits with the child's status instead of restarting it for ever.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType

__all__ = ["supervise"]

logger = logging.getLogger(__name__)

#: How long the parent waits before restarting a child that died.
_RESTART_PAUSE = 1.0
#: A child that fails sooner than this after its start failed to start.
_STARTUP_SECONDS = 5.0


class _Supervisor:
    def __init__(
        self,
        command: list[str],
        processes: int,
        per_child: Callable[[int], list[str]] | None = None,
    ) -> None:
        self.command = command
        self.per_child = per_child or (lambda index: [])
        self.children: list[subprocess.Popen[bytes]] = []
        self.started: list[float] = []
        self.processes = processes
        self.stopping = False
        self.signals = 0
        #: Signals received and not yet passed on to the children.
        self.pending: list[int] = []

    def start(self) -> None:
        for _ in range(self.processes):
            if self.stopping:
                break
            self.children.append(self._spawn(len(self.children)))
            self.started.append(time.monotonic())

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        # A session of its own: a terminal's Ctrl-C reaches the parent only,
        # which passes it on once.
        command = self.command + self.per_child(index)
        child = subprocess.Popen(command, start_new_session=True)
        logger.info("worker process %d started", child.pid, extra={"pid": child.pid})
        return child

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only note it: the watch loop passes it on, to the children alive
        # then, including one started while the signal arrived.
        self.stopping = True
        self.signals += 1
        self.pending.append(signum)

    def _forward_signals(self) -> None:
        while self.pending:
            signum = self.pending.pop(0)
            for child in self.children:
                if child.poll() is None:
                    child.send_signal(signum)

    def watch(self) -> int:
        while True:
            self._forward_signals()
            statuses = [child.poll() for child in self.children]
            if all(status is not None for status in statuses):
                return max((_exit_status(status) for status in statuses), default=0)
            if not self.stopping:
                self._restart_dead(statuses)
            time.sleep(0.2)

    def _restart_dead(self, statuses: list[int | None]) -> None:
        for index, status in enumerate(statuses):
            if status is None:
                continue
            pid = self.children[index].pid
            # Killed by a signal (the OOM killer, an operator) is no start-up
            # failure; an error exit status early on is.
            if status > 0 and time.monotonic() - self.started[index] < _STARTUP_SECONDS:
                logger.error(
                    "worker process %d failed at start with status %d; stopping",
                    pid,
                    status,
                )
                self.on_signal(signal.SIGTERM, None)
                return
            logger.warning(
                "worker process %d exited with status %d; restarting", pid, status
            )
            time.sleep(_RESTART_PAUSE)
            if self.stopping:
                return
            self.children[index] = self._spawn(index)
            self.started[index] = time.monotonic()


def _exit_status(status: int | None) -> int:
    """A child's exit status as a shell reports it: 128 + N if killed by signal N."""
    status = status or 0
    return 128 - status if status < 0 else status


def supervise(
    command_args: list[str],
    processes: int,
    per_child: Callable[[int], list[str]] | None = None,
) -> int:
    """Run ``processes`` children of ``asyncllm`` and return the exit status.

    Args:
        command_args: The arguments of each child's ``asyncllm`` command line.
        processes: How many worker processes to run.
        per_child: Extra arguments for the child with a given index, such as
            its own metrics port.
    """
    command = [sys.executable, "-m", "asyncllm", *command_args]
    supervisor = _Supervisor(command, processes, per_child)
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    signal.signal(signal.SIGINT, supervisor.on_signal)
    supervisor.start()
    return supervisor.watch()
