"""``asyncllm worker --processes P``: a parent that runs and stops P workers."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from .conftest import test_queue_options
from .process_apps import CALLS_ENV, SLEEP_ENV, read_calls
from .worker_harness import (
    ResponseReader,
    child_pids,
    is_running,
    make_queues,
    new_request,
    send_requests,
    wait_until,
    worker_env,
    worker_process,
)


def test_two_processes_share_the_work_and_sigterm_stops_both_with_status_0(
    app_settings: dict[str, Any], sqs_endpoint: str, sqs_client: Any, tmp_path: Path
) -> None:
    app, setup = make_queues(app_settings, test_queue_options())
    app.close()
    calls = tmp_path / "calls.log"
    env = worker_env(
        sqs_endpoint, app_settings, tmp_path, **{CALLS_ENV: str(calls), SLEEP_ENV: "2"}
    )
    requests = [new_request(), new_request()]
    reader = ResponseReader(sqs_client, setup.response_url)

    with worker_process(
        "parent", env, tmp_path, "--processes", "2", "--concurrency", "1"
    ) as parent:
        parent.wait_ready(count=2)
        children = child_pids(parent.pid)
        assert len(children) == 2
        send_requests(sqs_client, setup.request_url, requests)
        wait_until(
            lambda: len({row[2] for row in read_calls(calls)}) == 2,
            timeout=15,
            what="both children to start a call",
        )
        parent.signal(signal.SIGTERM)
        # The running calls finish within the grace period, then all exit.
        assert parent.wait(timeout=20) == 0
        reader.wait_for_ids([r.id for r in requests], timeout=10)

    assert {row[2] for row in read_calls(calls)} == children
    assert all(reader.responses()[r.id][0].ok for r in requests)
    assert not any(is_running(pid) for pid in children)
    assert parent.log().count("stopped") >= 2


def test_a_child_that_dies_is_replaced(
    app_settings: dict[str, Any], sqs_endpoint: str, tmp_path: Path
) -> None:
    app, _ = make_queues(app_settings, test_queue_options())
    app.close()
    env = worker_env(sqs_endpoint, app_settings, tmp_path)

    with worker_process("parent", env, tmp_path, "--processes", "2") as parent:
        parent.wait_ready(count=2)
        first = child_pids(parent.pid)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        replaced = wait_until(
            lambda: (
                len(now := child_pids(parent.pid)) == 2 and victim not in now and now
            ),
            timeout=15,
            what="a new child",
        )
        parent.wait_ready(count=3)
        parent.signal(signal.SIGTERM)
        assert parent.wait(timeout=15) == 0

    assert len(replaced & first) == 1
    assert not any(is_running(pid) for pid in replaced)


def test_children_that_cannot_start_stop_the_parent_with_their_status(
    app_settings: dict[str, Any], sqs_endpoint: str, tmp_path: Path
) -> None:
    env = worker_env(sqs_endpoint, app_settings, tmp_path)

    with worker_process(
        "parent",
        env,
        tmp_path,
        "--processes",
        "2",
        app_path="tests.process_apps:no_such_app",
    ) as parent:
        status = parent.wait(timeout=20)

    assert status == 2  # click's status for a bad parameter
    assert "is not an AsyncLLM app" in parent.log()
    # Not restarted: they would only fail again.
    assert parent.log().count(" started") == 2
