"""Run the benchmark suite: ``python -m benchmarks`` (or ``python benchmarks/run.py``).

One local SQS endpoint (moto's server, `benchmarks.sqs_server`) and, for the
LLM-shaped scenario, one fake provider (`benchmarks.provider`) serve every
case side by side, both on 127.0.0.1. Each case gets a reset endpoint, fresh
queues, a worker process started with its system's own command, and a
submitter process (`benchmarks.submit`). Every process is stopped at the end,
also on errors and Ctrl-C.

Results go to ``benchmarks/results/<time>/``; a full run also writes
``docs/benchmarks.md`` and ``docs/benchmarks.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _report
from benchmarks._env import (
    HOST,
    ROOT,
    child_env,
    free_port,
    machine,
    make_safe,
    versions,
)
from benchmarks._procs import (
    MemorySampler,
    ProcessGroup,
    Service,
    wait_for_port,
)
from benchmarks.cases import (
    PROVIDER_DELAY_SECONDS,
    Case,
    latency_case,
    llm_cases,
    throughput_cases,
    worker_command,
)

SCENARIOS = ("throughput", "llm", "latency")
#: Before each case, wait for the rest of the machine to use less than this.
QUIET_CORES = 0.25
SYSTEMS = ("boto3", "asyncllm", "celery", "dramatiq")


class Bench:
    """One run of the suite: the shared servers and the cases run against them.

    Args:
        group: Where every started process is registered.
        out_dir: This run's results folder.
        quiet_seconds: How long to wait for a quiet machine before each case.
            Defaults to 20.
    """

    def __init__(
        self, group: ProcessGroup, out_dir: Path, quiet_seconds: float = 20.0
    ) -> None:
        self.group = group
        self.out_dir = out_dir
        self.quiet_seconds = quiet_seconds
        self.sqs_port = free_port()
        self.provider_port = free_port()
        self.server_pids: list[int] = []
        self.runs = 0

    def start_servers(self, provider: bool) -> None:
        """Start the SQS endpoint and, if asked, the fake provider."""
        sqs = self.group.start(
            "sqs-server",
            [
                sys.executable,
                "-m",
                "benchmarks.sqs_server",
                "--port",
                str(self.sqs_port),
            ],
            child_env(),
        )
        wait_for_port(self.sqs_port, sqs)
        self.server_pids.append(sqs.pid)
        if provider:
            command = [sys.executable, "-m", "benchmarks.provider"]
            command += ["--port", str(self.provider_port)]
            command += ["--delay-seconds", str(PROVIDER_DELAY_SECONDS)]
            service = self.group.start("provider", command, child_env())
            wait_for_port(self.provider_port, service)
            self.server_pids.append(service.pid)

    def wait_quiet(self) -> float:
        """Wait, up to ``quiet_seconds``, until other processes leave the CPU idle.

        Returns:
            The cores the rest of the machine kept busy at the last look.
        """
        deadline = time.monotonic() + self.quiet_seconds
        other = _other_load(self.server_pids)
        if other >= QUIET_CORES:
            print(
                f"  other processes keep {other:.1f} cores busy; waiting up to "
                f"{self.quiet_seconds:g} s for them",
                flush=True,
            )
        while other >= QUIET_CORES and time.monotonic() < deadline:
            other = _other_load(self.server_pids)
        return other

    def reset_endpoint(self) -> None:
        """Empty moto: every queue and message is gone."""
        url = f"http://{HOST}:{self.sqs_port}/moto-api/reset"
        request = urllib.request.Request(url, method="POST")
        with urllib.request.urlopen(request, timeout=30):
            pass

    def env(self, case: Case, prefix: str) -> dict[str, str]:
        """The environment of a case's worker and submitter."""
        requests_name, responses_name = f"{prefix}-requests", f"{prefix}-responses"
        state = self.out_dir / "state"
        state.mkdir(parents=True, exist_ok=True)
        return child_env(
            self.sqs_port,
            BENCH_SQS_PORT=str(self.sqs_port),
            BENCH_PREFIX=prefix,
            BENCH_PROVIDER_URL=f"http://{HOST}:{self.provider_port}",
            ASYNCLLM_SQS_ENDPOINT_URL=f"http://{HOST}:{self.sqs_port}",
            ASYNCLLM_REQUEST_QUEUE=requests_name,
            ASYNCLLM_RESPONSE_QUEUE=responses_name,
            ASYNCLLM_RESULT_STORE=f"sqlite:///{state / prefix}-results.sqlite3",
            ASYNCLLM_LEDGER=f"sqlite:///{state / prefix}-ledger.sqlite3",
            **case.env,
        )

    def prepare_queues(self, case: Case, prefix: str) -> None:
        """Create the queues a system expects to exist already."""
        requests_name, responses_name = f"{prefix}-requests", f"{prefix}-responses"
        if case.system == "asyncllm":
            from asyncllm import AsyncLLM

            app = AsyncLLM(
                endpoint_url=f"http://{HOST}:{self.sqs_port}",
                request_queue=requests_name,
                response_queue=responses_name,
                result_store="memory://",
                ledger="memory://",
            )
            app.create_queues()
            app.close()
        elif case.system == "boto3":
            import boto3

            sqs = boto3.client("sqs", endpoint_url=f"http://{HOST}:{self.sqs_port}")
            sqs.create_queue(QueueName=requests_name)
            sqs.create_queue(QueueName=responses_name)

    def run_case(
        self, case: Case, requests: int, profile: Path | None = None
    ) -> dict[str, Any]:
        """Run one case and return its numbers (or its error)."""
        self.runs += 1
        prefix = f"r{self.runs}-{case.system}"
        name = f"{self.runs:02d}-{case.key}" + ("-profile" if profile else "")
        quiet = self.wait_quiet()
        self.reset_endpoint()
        self.prepare_queues(case, prefix)
        env = self.env(case, prefix)
        command = worker_command(case, f"{prefix}-requests")
        if profile is not None:
            command = _under_py_spy(command, profile)
        print(f"  {case.label}: {requests} requests ...", flush=True)
        started = time.monotonic()
        worker = self.group.start(f"{name}-worker", command, env)
        sampler = MemorySampler(worker.pid).start()
        try:
            result = self._submit(case, requests, worker, env, name)
        finally:
            sampler.stop()
            _stop_worker(self.group, worker, profile is not None)
        result.update(
            peak_rss_bytes=sampler.peak_rss,
            peak_pss_bytes=sampler.peak_pss,
            peak_processes=sampler.peak_processes,
            worker_command=shlex.join([Path(command[0]).name, *command[1:]]),
            other_cores_before=quiet,
            case_seconds=time.monotonic() - started,
        )
        if "error" in result:
            result["worker_log"] = worker.log_tail()
        print(f"    {_report.one_line(case, result)}", flush=True)
        return result

    def _submit(
        self,
        case: Case,
        requests: int,
        worker: Service,
        env: dict[str, str],
        name: str,
    ) -> dict[str, Any]:
        out = self.out_dir / f"{name}.json"
        timeout = 30 + requests * 0.15
        command = [sys.executable, "-m", "benchmarks.submit", "--system", case.system]
        command += ["--requests", str(requests), "--window", str(case.window)]
        command += ["--worker-pid", str(worker.pid), "--out", str(out)]
        command += ["--timeout-seconds", str(timeout)]
        for pid in self.server_pids:
            command += ["--server-pid", str(pid)]
        if case.scenario == "latency":
            command.append("--latency")
        submitter = self.group.start(f"{name}-submit", command, env)
        problem = _wait_submitter(submitter, worker, timeout + 120 + 60)
        self.group.stop(submitter)
        if problem:
            return {"error": problem}
        if not out.exists():
            return {"error": f"the submitter wrote nothing:\n{submitter.log_tail()}"}
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def _wait_submitter(submitter: Service, worker: Service, seconds: float) -> str:
    """Wait for the submitter to finish; returns what went wrong, if anything."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            submitter.popen.wait(1.0)
            return ""
        if not worker.running():
            status = worker.popen.returncode
            return f"the worker exited with status {status} during the run"
    return f"the submitter ran over {seconds:g} s:\n{submitter.log_tail()}"


def _other_load(ours: list[int], seconds: float = 1.0) -> float:
    """Cores kept busy over ``seconds`` by processes other than ``ours``."""
    from benchmarks._procs import tree_cpu_seconds
    from benchmarks.submit import machine_busy_seconds

    busy, mine = machine_busy_seconds(), sum(map(tree_cpu_seconds, ours))
    time.sleep(seconds)
    busy = machine_busy_seconds() - busy
    mine = sum(map(tree_cpu_seconds, ours)) - mine
    return max(0.0, busy - mine) / seconds


def _under_py_spy(command: list[str], output: Path) -> list[str]:
    spy = Path(sys.executable).with_name("py-spy")
    return [
        str(spy),
        "record",
        "--format",
        "raw",
        "--rate",
        "200",
        "--nonblocking",
        # Only the thread holding the GIL: idle threads' samples leak into
        # the default mode on this kind of machine.
        "--gil",
        "--output",
        str(output),
        "--",
        *command,
    ]


def _stop_worker(group: ProcessGroup, worker: Service, profiled: bool) -> None:
    """Stop a worker; under py-spy, stop the worker first so py-spy writes."""
    if profiled:
        import psutil

        for child in psutil.Process(worker.pid).children():
            child.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.popen.wait(30)
    group.stop(worker, timeout=8)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="asyncllm vs Celery, dramatiq-sqs and bare boto3 on local SQS.",
    )
    parser.add_argument(
        "--requests", type=int, help="requests per case (default 2000, quick 200)"
    )
    parser.add_argument(
        "--latency-requests", type=int, help="latency samples (default 200, quick 50)"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated: throughput (also gives CPU), llm, latency",
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated systems to run"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="for development: 200 requests, no profile unless asked, no docs",
    )
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="py-spy profile of the asyncllm worker: auto = when a target is missed "
        "(full runs only)",
    )
    parser.add_argument(
        "--docs",
        choices=("auto", "always", "never"),
        default="auto",
        help="write docs/benchmarks.md and .png: auto = full runs only",
    )
    parser.add_argument(
        "--render",
        metavar="RESULTS_DIR",
        type=Path,
        help="run nothing: write docs/benchmarks.md and .png again from the "
        "summary.json of an earlier run (after editing benchmarks/ANALYSIS.md)",
    )
    parser.add_argument(
        "--quiet-seconds",
        type=float,
        help="before each case, wait up to this long for other processes to leave "
        "the CPU idle (default 20, quick 5)",
    )
    args = parser.parse_args(argv)
    if args.quiet_seconds is None:
        args.quiet_seconds = 5.0 if args.quick else 20.0
    args.requests = args.requests or (200 if args.quick else 2000)
    args.latency_requests = args.latency_requests or (50 if args.quick else 200)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.systems = [s for s in args.systems.split(",") if s]
    unknown = set(args.scenarios) - set(SCENARIOS) | set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown scenario or system: {', '.join(sorted(unknown))}")
    return args


def select_cases(args: argparse.Namespace) -> list[Case]:
    """The cases the command line asks for, in run order."""
    cases: list[Case] = []
    if "throughput" in args.scenarios:
        cases += throughput_cases()
    if "llm" in args.scenarios:
        cases += llm_cases()
    if "latency" in args.scenarios:
        cases.append(latency_case())
    return [case for case in cases if case.system in args.systems]


def main(argv: list[str] | None = None) -> int:
    """Run the suite; returns the exit status."""
    args = parse_args(argv)
    if args.render is not None:
        summary = json.loads((args.render / "summary.json").read_text())
        _report.write_all(summary, args.render, docs=True)
        return 0
    make_safe()
    signal.signal(signal.SIGTERM, _interrupt)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = ROOT / "benchmarks" / "results" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "-m", "benchmarks", *(argv or sys.argv[1:])])
    cases = select_cases(args)
    print(f"benchmarks: {len(cases)} cases, results in {out_dir}", flush=True)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    profile: dict[str, Any] | None = None
    interrupted = False
    with ProcessGroup(out_dir / "logs") as group:
        bench = Bench(group, out_dir, args.quiet_seconds)
        bench.start_servers(provider=any(c.scenario == "llm" for c in cases))
        try:
            for case in cases:
                rows.append(
                    {"case": asdict(case), **_run_with_retry(bench, case, args)}
                )
            targets = _report.evaluate(rows)
            if _wants_profile(args, targets):
                profile = _profile(bench, args, out_dir)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping every process", flush=True)
            interrupted = True
    summary = {
        "command": command,
        "seconds": time.monotonic() - started,
        "finished": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "versions": versions(),
        "quick": args.quick,
        "interrupted": interrupted,
        "rows": rows,
        "targets": _report.evaluate(rows),
        "profile": profile,
    }
    _report.write_all(summary, out_dir, _wants_docs(args) and not interrupted)
    return 130 if interrupted else 0


#: The module each system's harness needs.
_MODULES = {
    "boto3": "boto3",
    "asyncllm": "asyncllm",
    "celery": "celery",
    "dramatiq": "dramatiq_sqs",
}


def _run_with_retry(
    bench: Bench, case: Case, args: argparse.Namespace
) -> dict[str, Any]:
    """Run a case; a failed case is run once more, and both tries are reported."""
    module = _MODULES[case.system]
    if importlib.util.find_spec(module) is None:
        print(f"  {case.label}: {module} is not installed; skipped", flush=True)
        return {"error": f"{module} is not installed (pip install -e '.[bench]')"}
    n = args.latency_requests if case.scenario == "latency" else args.requests
    result = bench.run_case(case, n)
    if "error" not in result:
        return result
    print("    failed; trying once more", flush=True)
    again = bench.run_case(case, n)
    again["first_try_error"] = result["error"]
    again["first_try_worker_log"] = result.get("worker_log", "")
    return again


def _wants_profile(args: argparse.Namespace, targets: list[dict[str, Any]]) -> bool:
    if args.profile == "never" or "asyncllm" not in args.systems:
        return False
    missed = any(target["met"] is False for target in targets)
    return args.profile == "always" or (missed and not args.quick)


def _wants_docs(args: argparse.Namespace) -> bool:
    return args.docs == "always" or (args.docs == "auto" and not args.quick)


def _profile(bench: Bench, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Profile the asyncllm worker with py-spy in the no-op scenario."""
    from benchmarks import _profile

    case = next(c for c in throughput_cases() if c.system == "asyncllm")
    raw = out_dir / "asyncllm-worker.pyspy.txt"
    print("profiling the asyncllm worker with py-spy ...", flush=True)
    requests = min(args.requests, 600)
    result = bench.run_case(case, requests, profile=raw)
    if not raw.exists():
        return {"error": "py-spy wrote no profile", "run": result}
    return {"run": result, **_profile.summarize(raw)}


if __name__ == "__main__":
    raise SystemExit(main())
