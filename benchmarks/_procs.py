"""Starting, watching and stopping the processes of a benchmark run.

Each process starts in a session of its own, so that stopping it stops its
children too (Celery's prefork pool, dramatiq's worker processes). Every
process is registered with a `ProcessGroup`, which stops whatever is still
running when the run ends, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psutil

from ._env import HOST, ROOT


@dataclass
class Service:
    """One started process (and the session it leads)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def running(self) -> bool:
        """True while the process has not exited."""
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process's session, then SIGKILL it after ``timeout``.

        Returns:
            The exit status, or None if it had to be killed.
        """
        if self.running():
            self._signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                return self.popen.wait(timeout)
        # Leftover children (a pool process whose parent exited) go too.
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        return None if self.popen.returncode is None else self.popen.returncode

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of the process's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class ProcessGroup:
    """Starts processes and stops them all at the end, whatever happens."""

    log_dir: Path
    services: list[Service] = field(default_factory=list)

    def start(
        self,
        name: str,
        command: Sequence[str],
        env: dict[str, str],
    ) -> Service:
        """Start a command in its own session, output to ``log_dir/name.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(command),
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, popen, log_path)
        self.services.append(service)
        return service

    def stop(self, service: Service, timeout: float = 10.0) -> int | None:
        """Stop one service and forget it."""
        status = service.stop(timeout)
        with contextlib.suppress(ValueError):
            self.services.remove(service)
        return status

    def stop_all(self) -> None:
        """Stop every service still registered, newest first."""
        for service in reversed(list(self.services)):
            self.stop(service, timeout=5.0)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()


def wait_for_port(port: int, service: Service, timeout: float = 30.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``.

    Raises:
        RuntimeError: The service exited or the port stayed closed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.running():
            raise RuntimeError(f"{service.name} exited:\n{service.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{service.name} did not open port {port} in {timeout:g} s")


def tree(pid: int) -> list[psutil.Process]:
    """Return a process and all its descendants (those still alive)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds used so far by a process tree."""
    total = 0.0
    for process in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def _pss_bytes(pid: int) -> int:
    """Proportional set size from /proc/PID/smaps_rollup (0 if unreadable)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


class MemorySampler:
    """Samples a process tree's memory in a thread and keeps the peaks.

    RSS is summed over the tree, which counts pages shared between a parent
    and its forked children once per process; PSS splits shared pages between
    the processes that share them, so its sum is the tree's real footprint.

    Args:
        pid: The root of the tree.
        interval: Seconds between samples. Defaults to 0.2.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> MemorySampler:
        """Begin sampling; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (within one interval)."""
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        rss = pss = 0
        processes = tree(self.pid)
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                rss += process.memory_info().rss
                pss += _pss_bytes(process.pid)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_processes = max(self.peak_processes, len(processes))
