"""``asyncllm worker --processes P``: several worker processes under one parent.

For handlers that use the CPU (tokenizers, local post-processing), one event
loop per core. The parent starts P children running the same command, passes
SIGTERM and SIGINT on to them, restarts a child that dies unexpectedly, and
exits when all children have exited after a stop: 0 if every child exited 0.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from types import FrameType

__all__ = ["supervise"]

logger = logging.getLogger(__name__)

#: A child that dies sooner than this after its start is not restarted again
#: at once; the parent waits this long first.
_RESTART_PAUSE = 1.0


class _Supervisor:
    def __init__(self, command: list[str], processes: int) -> None:
        self.command = command
        self.children: list[subprocess.Popen[bytes]] = []
        self.processes = processes
        self.stopping = False
        self.signals = 0

    def start(self) -> None:
        for _ in range(self.processes):
            self.children.append(self._spawn())

    def _spawn(self) -> subprocess.Popen[bytes]:
        # A session of its own: a terminal's Ctrl-C reaches the parent only,
        # which passes it on once.
        child = subprocess.Popen(self.command, start_new_session=True)
        logger.info("worker process %d started", child.pid, extra={"pid": child.pid})
        return child

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        self.signals += 1
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signum)

    def watch(self) -> int:
        while True:
            statuses = [child.poll() for child in self.children]
            if all(status is not None for status in statuses):
                return max((abs(status or 0) for status in statuses), default=0)
            if not self.stopping:
                self._restart_dead(statuses)
            time.sleep(0.2)

    def _restart_dead(self, statuses: list[int | None]) -> None:
        for index, status in enumerate(statuses):
            if status is None:
                continue
            logger.warning(
                "worker process %d exited with status %d; restarting",
                self.children[index].pid,
                status,
            )
            time.sleep(_RESTART_PAUSE)
            self.children[index] = self._spawn()


def supervise(command_args: list[str], processes: int) -> int:
    """Run ``processes`` children of ``asyncllm`` and return the exit status.

    Args:
        command_args: The arguments of each child's ``asyncllm`` command line.
        processes: How many worker processes to run.
    """
    command = [sys.executable, "-m", "asyncllm", *command_args]
    supervisor = _Supervisor(command, processes)
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    signal.signal(signal.SIGINT, supervisor.on_signal)
    supervisor.start()
    return supervisor.watch()
