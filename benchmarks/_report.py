"""Turning measured runs into numbers, targets, tables, a chart and the docs page."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from benchmarks._env import ROOT, machine, versions
from benchmarks.cases import PROVIDER_DELAY_SECONDS, Case

MB = 1024 * 1024
DOCS = ROOT / "docs"
#: Hand-written analysis included in the docs page, if present.
ANALYSIS = ROOT / "benchmarks" / "ANALYSIS.md"


def derive(row: dict[str, Any]) -> dict[str, Any]:
    """Compute a row's reported numbers from what was measured."""
    case = row["case"]
    answered = row.get("answered", 0)
    wall = row.get("wall_seconds") or 0.0
    cpu = row.get("submitter_cpu_seconds", 0.0) + row.get("worker_cpu_seconds", 0.0)
    calls = sum(row.get("sqs_calls", {}).values())
    numbers: dict[str, Any] = {
        "label": case["label"] + (" (retried)" if "first_try_error" in row else ""),
        "ok": "error" not in row and answered == row.get("requests"),
        "answered": answered,
        "requests": row.get("requests", 0),
        "wall": wall,
        "throughput": answered / wall if wall else 0.0,
        "cpu_per_1000": cpu / answered * 1000 if answered else None,
        "submitter_cpu_per_1000": _per_1000(row, "submitter_cpu_seconds"),
        "worker_cpu_per_1000": _per_1000(row, "worker_cpu_seconds"),
        "calls_per_request": calls / answered if answered else None,
        "rss_mb": row.get("peak_rss_bytes", 0) / MB,
        "pss_mb": row.get("peak_pss_bytes", 0) / MB,
        "processes": row.get("peak_processes", 0),
        "server_cpu_per_1000": _per_1000(row, "servers_cpu_seconds"),
        "other_cores": row.get("other_cpu_seconds", 0.0) / wall if wall else 0.0,
    }
    if case["scenario"] == "llm" and case["concurrency"]:
        ideal = row.get("requests", 0) * PROVIDER_DELAY_SECONDS / case["concurrency"]
        numbers["ideal"] = ideal
        numbers["vs_ideal"] = wall / ideal if ideal else None
        numbers["provider_peak"] = row.get("provider", {}).get("peak_concurrent")
    return numbers


def _per_1000(row: dict[str, Any], key: str) -> float | None:
    answered = row.get("answered", 0)
    return row.get(key, 0.0) / answered * 1000 if answered else None


def one_line(case: Case, result: dict[str, Any]) -> str:
    """A progress line for a finished case."""
    if "error" in result:
        return f"FAILED: {result['error'].splitlines()[0]}"
    numbers = derive(
        {
            "case": {
                "scenario": case.scenario,
                "label": case.label,
                "concurrency": case.concurrency,
            },
            **result,
        }
    )
    text = (
        f"{numbers['answered']}/{numbers['requests']} in {numbers['wall']:.1f} s, "
        f"{numbers['throughput']:.1f} msg/s, "
        f"{_num(numbers['cpu_per_1000'], 2)} CPU s/1000, "
        f"{_num(numbers['calls_per_request'], 2)} calls/request, "
        f"RSS {numbers['rss_mb']:.0f} MB"
    )
    if case.scenario == "latency":
        text += (
            f", p50 {result.get('latency_p50', 0) * 1000:.0f} ms, "
            f"p99 {result.get('latency_p99', 0) * 1000:.0f} ms"
        )
    return text


def _find(rows: list[dict[str, Any]], scenario: str, label: str) -> dict[str, Any]:
    for row in rows:
        case = row["case"]
        if (
            case["scenario"] == scenario
            and case["label"] == label
            and "error" not in row
        ):
            return derive(row)
    return {}


def _target(
    name: str, goal: str, measured: str, met: bool | None, note: str = ""
) -> dict[str, Any]:
    return {"name": name, "goal": goal, "measured": measured, "met": met, "note": note}


def evaluate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check the issue's targets against one run's rows.

    A target whose rows are missing (not run, or failed) is reported with
    ``met`` None.
    """
    ours = _find(rows, "throughput", "asyncllm")
    ceiling = _find(rows, "throughput", "boto3 batch loop")
    celery = _find(rows, "throughput", "Celery prefork")
    llm = _find(rows, "llm", "asyncllm c=500")
    return [
        _ratio_target(
            "no-op throughput vs the boto3 batch ceiling",
            ours,
            ceiling,
            "throughput",
            0.9,
            higher=True,
        ),
        _ratio_target(
            "no-op throughput vs Celery", ours, celery, "throughput", 2.0, higher=True
        ),
        _ratio_target(
            "client CPU per request vs Celery",
            ours,
            celery,
            "cpu_per_1000",
            0.5,
            higher=False,
        ),
        _llm_wall_target(llm),
        _llm_rss_target(llm),
    ]


def _ratio_target(
    name: str,
    ours: dict[str, Any],
    theirs: dict[str, Any],
    key: str,
    ratio: float,
    higher: bool,
) -> dict[str, Any]:
    goal = f"{'≥' if higher else '≤'} {ratio:g} x"
    if not ours.get(key) or not theirs.get(key):
        return _target(name, goal, "not measured", None)
    measured = ours[key] / theirs[key]
    met = measured >= ratio if higher else measured <= ratio
    return _target(name, goal, f"{measured:.2f} x", met)


def _llm_wall_target(llm: dict[str, Any]) -> dict[str, Any]:
    name = "LLM-shaped wall time at concurrency 500 vs ideal"
    if not llm.get("vs_ideal"):
        return _target(name, "≤ 1.1 x", "not measured", None)
    return _target(
        name,
        "≤ 1.1 x",
        f"{llm['vs_ideal']:.2f} x ({llm['wall']:.1f} s vs {llm['ideal']:.1f} s)",
        llm["vs_ideal"] <= 1.1,
    )


def _llm_rss_target(llm: dict[str, Any]) -> dict[str, Any]:
    name = "peak RSS of the worker at concurrency 500"
    if not llm.get("rss_mb"):
        return _target(name, "≤ 150 MB", "not measured", None)
    return _target(name, "≤ 150 MB", f"{llm['rss_mb']:.0f} MB", llm["rss_mb"] <= 150)


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def targets_table(targets: list[dict[str, Any]]) -> str:
    """The targets as a Markdown table."""
    lines = ["| target | goal | measured | verdict |", "|---|---|---|---|"]
    for target in targets:
        lines.append(
            f"| {target['name']} | {target['goal']} | {target['measured']} "
            f"| {_verdict(target['met'])} |"
        )
    return "\n".join(lines)


def throughput_table(rows: list[dict[str, Any]]) -> str:
    """The no-op scenario: throughput, client CPU and SQS calls per request."""
    chosen = [r for r in rows if r["case"]["scenario"] == "throughput"]
    ceiling = _find(rows, "throughput", "boto3 batch loop").get("throughput")
    lines = [
        "| system | answered | wall s | msg/s | x ceiling | client CPU s / 1000 "
        "(submitter + worker) | SQS calls / request | endpoint CPU s / 1000 | "
        "worker peak RSS MB | other load, cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in chosen:
        lines.append(_throughput_line(row, ceiling))
    return "\n".join(lines)


def _throughput_line(row: dict[str, Any], ceiling: float | None) -> str:
    n = derive(row)
    if "error" in row:
        return f"| {n['label']} | failed: {_first_line(row['error'])} |||||||"
    share = f"{n['throughput'] / ceiling:.2f}" if ceiling else "-"
    cpu = (
        f"{_num(n['cpu_per_1000'], 2)} ({_num(n['submitter_cpu_per_1000'], 2)} + "
        f"{_num(n['worker_cpu_per_1000'], 2)})"
    )
    return (
        f"| {n['label']} | {n['answered']}/{n['requests']} | {n['wall']:.1f} | "
        f"{n['throughput']:.1f} | {share} | {cpu} | "
        f"{_num(n['calls_per_request'], 2)} | {_num(n['server_cpu_per_1000'], 2)} | "
        f"{n['rss_mb']:.0f} | {n['other_cores']:.2f} |"
    )


def llm_table(rows: list[dict[str, Any]]) -> str:
    """The LLM-shaped scenario: wall time against the ideal, memory."""
    lines = [
        "| system | answered | wall s | ideal s | wall / ideal | msg/s | provider "
        "peak concurrency | worker peak RSS MB (sum) | PSS MB | processes | "
        "client CPU s / 1000 | SQS calls / request | other load, cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in (r for r in rows if r["case"]["scenario"] == "llm"):
        n = derive(row)
        if "error" in row:
            lines.append(f"| {n['label']} | failed: {_first_line(row['error'])} |")
            continue
        lines.append(
            f"| {n['label']} | {n['answered']}/{n['requests']} | {n['wall']:.1f} | "
            f"{n['ideal']:.1f} | {_num(n['vs_ideal'], 2)} | {n['throughput']:.1f} | "
            f"{n.get('provider_peak') or '-'} | {n['rss_mb']:.0f} | "
            f"{n['pss_mb']:.0f} | {n['processes']} | {_num(n['cpu_per_1000'], 2)} | "
            f"{_num(n['calls_per_request'], 2)} | {n['other_cores']:.2f} |"
        )
    return "\n".join(lines)


def latency_table(rows: list[dict[str, Any]]) -> str:
    """Submit → result latency at low load."""
    lines = [
        "| system | samples | p50 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in (r for r in rows if r["case"]["scenario"] == "latency"):
        label = row["case"]["label"]
        if "error" in row:
            lines.append(f"| {label} | failed: {_first_line(row['error'])} ||||")
            continue
        lines.append(
            f"| {label} | {row['answered']} | {row['latency_p50'] * 1000:.0f} | "
            f"{row['latency_p99'] * 1000:.0f} | {row['latency_mean'] * 1000:.0f} |"
        )
    return "\n".join(lines)


def calls_table(rows: list[dict[str, Any]]) -> str:
    """SQS calls per request by action, for the no-op scenario."""
    chosen = [
        r for r in rows if r["case"]["scenario"] == "throughput" and r.get("answered")
    ]
    actions = sorted({a for r in chosen for a in r.get("sqs_calls", {})})
    if not actions:
        return ""
    lines = [
        "| system | " + " | ".join(actions) + " |",
        "|---|" + "---:|" * len(actions),
    ]
    for row in chosen:
        calls = row.get("sqs_calls", {})
        cells = [f"{calls.get(a, 0) / row['answered']:.2f}" for a in actions]
        lines.append(f"| {row['case']['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failures(rows: list[dict[str, Any]]) -> str:
    """What failed in the run, with the lines of the worker's log that say why."""
    items = []
    for row in rows:
        label = row["case"]["label"]
        if "first_try_error" in row:
            items.append(
                _failure(
                    label,
                    "first try",
                    row["first_try_error"],
                    row.get("first_try_worker_log", ""),
                )
            )
        if "error" in row:
            items.append(
                _failure(label, "run", row["error"], row.get("worker_log", ""))
            )
    return "\n".join(items)


def _failure(label: str, which: str, error: str, log: str) -> str:
    why = [line.strip() for line in log.splitlines() if "Error" in line][-2:]
    text = f"- **{label}** ({which}): {_first_line(error)}"
    if why:
        text += "; worker log: " + " / ".join(f"`{line[:160]}`" for line in why)
    return text


def settings_list(rows: list[dict[str, Any]]) -> str:
    """Each case's settings and the worker command it ran."""
    lines = []
    for row in rows:
        case = row["case"]
        command = row.get("worker_command", "?")
        lines.append(
            f"- **{case['label']}** ({case['scenario']}, at most {case['window']} "
            f"outstanding): {case['settings']}. Worker: `{command}`"
        )
    return "\n".join(lines)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:120] if text.strip() else "?"


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Draw the results as one PNG of four panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    noop = [
        derive(r)
        for r in rows
        if r["case"]["scenario"] == "throughput" and "error" not in r
    ]
    llm = [
        derive(r) for r in rows if r["case"]["scenario"] == "llm" and "error" not in r
    ]
    _bars(axes[0][0], noop, "throughput", "no-op throughput (msg/s, higher is better)")
    _cpu_bars(axes[0][1], noop)
    _llm_bars(axes[1][0], llm)
    _bars(axes[1][1], llm, "rss_mb", "LLM-shaped: worker peak RSS (MB, log scale)")
    if llm:
        axes[1][1].set_yscale("log")
        axes[1][1].axhline(150, color="crimson", linestyle="--", linewidth=1)
    figure.suptitle("asyncllm vs peers on one local SQS endpoint (moto), same run")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _empty(axis: Any, numbers: list[dict[str, Any]], title: str) -> bool:
    """Label a panel whose scenario was not run; True if it is empty."""
    if numbers:
        return False
    axis.set_title(title, fontsize=10)
    axis.text(0.5, 0.5, "not run", ha="center", va="center", transform=axis.transAxes)
    axis.set_xticks([])
    axis.set_yticks([])
    return True


def _bars(axis: Any, numbers: list[dict[str, Any]], key: str, title: str) -> None:
    if _empty(axis, numbers, title):
        return
    labels = [n["label"] for n in numbers]
    values = [n.get(key) or 0 for n in numbers]
    colors = ["tab:green" if "asyncllm" in label else "tab:gray" for label in labels]
    axis.bar(labels, values, color=colors)
    for index, value in enumerate(values):
        axis.annotate(
            f"{value:.0f}", (index, value), ha="center", va="bottom", fontsize=8
        )
    axis.set_title(title, fontsize=10)
    axis.tick_params(axis="x", labelrotation=20, labelsize=8)


def _cpu_bars(axis: Any, numbers: list[dict[str, Any]]) -> None:
    title = "client CPU s per 1000 requests (lower is better)"
    if _empty(axis, numbers, title):
        return
    labels = [n["label"] for n in numbers]
    submitter = [n.get("submitter_cpu_per_1000") or 0 for n in numbers]
    worker = [n.get("worker_cpu_per_1000") or 0 for n in numbers]
    axis.bar(labels, submitter, label="submitter", color="tab:blue")
    axis.bar(labels, worker, bottom=submitter, label="worker", color="tab:orange")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)
    axis.tick_params(axis="x", labelrotation=20, labelsize=8)


def _llm_bars(axis: Any, numbers: list[dict[str, Any]]) -> None:
    title = "LLM-shaped: wall time (s, lower is better)"
    if _empty(axis, numbers, title):
        return
    labels = [n["label"] for n in numbers]
    colors = ["tab:green" if "asyncllm" in label else "tab:gray" for label in labels]
    axis.bar(labels, [n["wall"] for n in numbers], color=colors, label="wall")
    axis.scatter(
        labels,
        [n["ideal"] for n in numbers],
        color="crimson",
        zorder=3,
        label="ideal (requests x 0.3 s / concurrency)",
    )
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)
    axis.tick_params(axis="x", labelrotation=20, labelsize=8)


def markdown(summary: dict[str, Any], chart_name: str) -> str:
    """The docs page."""
    rows = summary["rows"]
    when = summary.get("finished") or time.strftime("%Y-%m-%d %H:%M %Z")
    info = summary.get("machine") or machine()
    installed = summary.get("versions") or versions()
    parts = [
        "# Benchmarks",
        "",
        "asyncllm against Celery 5.7 on its SQS broker, dramatiq with dramatiq-sqs "
        "and a bare boto3 loop with batch calls, side by side in one run on one "
        "local SQS endpoint (moto's server on 127.0.0.1). Generated by "
        "`benchmarks/run.py`; the numbers are from one run and only their ratios "
        "mean anything beyond this machine.",
        "",
        f"Run {when}, {summary['seconds'] / 60:.1f} minutes, with:",
        "",
        "```bash",
        "pip install -e '.[bench]'",
        summary["command"],
        "```",
        "",
        "## Targets",
        "",
        targets_table(summary["targets"]),
        "",
        f"![benchmark chart]({chart_name})",
        "",
        "## No-op handler: throughput, client CPU, SQS calls",
        "",
        throughput_table(rows),
        "",
        "SQS calls per request, by action (submitter and worker together):",
        "",
        calls_table(rows),
        "",
        "## LLM-shaped load",
        "",
        f"Each request calls a fake OpenAI-compatible provider on 127.0.0.1 "
        f"that answers after {PROVIDER_DELAY_SECONDS * 1000:.0f} ms. Ideal = "
        "requests x 0.3 s / concurrency.",
        "",
        llm_table(rows),
        "",
        "## Submit → result latency at low load",
        "",
        latency_table(rows),
        "",
    ]
    failed = failures(rows)
    if failed:
        parts += ["## Failures in this run", "", failed, ""]
    parts += _analysis_section(summary)
    parts += [
        "## Settings of each system",
        "",
        settings_list(rows),
        "",
        "## Method",
        "",
        METHOD,
        "",
        "## Machine and versions",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores; memory {info['memory']}; "
        f"{info['os']}; Python {info['python']}",
        "- " + ", ".join(f"{k} {v}" for k, v in installed.items()),
        "",
    ]
    return "\n".join(parts)


def _analysis_section(summary: dict[str, Any]) -> list[str]:
    parts = []
    profile = summary.get("profile")
    if profile:
        parts += ["## Profile of the asyncllm worker", "", _profile_text(profile), ""]
    if ANALYSIS.exists():
        parts += [ANALYSIS.read_text().strip(), ""]
    return parts


def _profile_text(profile: dict[str, Any]) -> str:
    if "error" in profile:
        return f"The profile could not be taken: {profile['error']}."
    lines = [
        f"py-spy, {profile['samples']} samples of the worker's thread holding the "
        "GIL, in the no-op scenario (`--gil --nonblocking`, 200 Hz; "
        f"{profile['startup_samples']} samples of start-up work left out). "
        "Where its CPU goes, by the innermost library frame:",
        "",
        "| where | share of samples |",
        "|---|---:|",
    ]
    for name, share in profile["categories"]:
        lines.append(f"| {name} | {share:.0%} |")
    lines += [
        "",
        "asyncllm functions by inclusive share:",
        "",
        "| function | share |",
        "|---|---:|",
    ]
    for name, share in profile["asyncllm"]:
        lines.append(f"| `{name}` | {share:.0%} |")
    lines += ["", "Functions with the most samples of their own:", ""]
    lines += ["| function | share |", "|---|---:|"]
    for name, share in profile["leaves"]:
        lines.append(f"| `{name}` | {share:.0%} |")
    return "\n".join(lines)


METHOD = """\
- **Endpoint.** moto's SQS server as a separate process on 127.0.0.1
  (`benchmarks/sqs_server.py`: moto's own WSGI app and request handler, plus a
  counter of calls by action). It is reset (`POST /moto-api/reset`) before
  every case and every case gets fresh queues. The endpoint shares the two
  cores with the clients, so every client CPU second slows the server too.
- **Shallow queues.** moto's cost per call grows with queue depth, so the
  submitter keeps at most 50 requests outstanding (submitted and not yet
  answered) in the no-op scenario, which bounds the depth of both queues. In
  the LLM-shaped scenario the bound is 110 for every system, room for 100
  calls in flight; moto's intake keeps far fewer in flight (the provider's
  peak concurrency column), so a deeper bound would only slow the endpoint.
- **SQS calls** are counted by the endpoint, by action, over the measured
  phase; **endpoint CPU** is the CPU the endpoint (and in the LLM-shaped
  scenario the fake provider) used meanwhile; **other load** is the CPU the
  rest of the machine used meanwhile, in cores: a run disturbed by other work
  shows there. Before each case the runner waits up to 20 s for other
  processes to leave the CPU idle.
- **Same work everywhere.** Every request is the same small chat request;
  every answer is a message on a response queue that the submitter reads and
  deletes with the system's own client API. Celery has no SQS result backend,
  so its task publishes the answer with `app.send_task` to a response queue
  and the submitter reads it with kombu's `SimpleQueue`; dramatiq's actor
  sends the answer to a second actor's queue and the submitter reads it with
  the broker's consumer. asyncllm's submitter is `submit_many` plus the
  collector (`app.collect`), with the default SQLite result store; its worker
  uses the default SQLite ledger. All workers log at WARNING.
- **Warm-up.** 20 requests are answered before the measured phase, so imports,
  connections and pool processes are ready. A case whose worker exits, that
  stalls for 60 s or that fails otherwise is run once more; both tries are
  reported.
- **Profile.** When a target is missed, the asyncllm no-op case runs once
  more with the worker started under `py-spy record --gil --nonblocking`;
  samples of start-up work are left out.
- **CPU.** Submitter: its own `process_time` over the measured phase. Worker:
  user + system CPU of the worker's process tree (psutil) over the same
  phase, including pool and child processes.
- **Memory.** The worker's process tree is sampled every 0.2 s; RSS is summed
  over its processes (pages shared after a fork count once per process) and
  PSS splits shared pages fairly.
- **Bounds.** Every load loop is bounded in count and time; every process is
  stopped at the end of its case and of the run, also on errors and Ctrl-C.
  Nothing listens or connects anywhere but 127.0.0.1."""


def print_tables(summary: dict[str, Any]) -> None:
    """Print the results as Markdown on standard output."""
    rows = summary["rows"]
    print()
    print(targets_table(summary["targets"]))
    for title, table in (
        ("No-op handler", throughput_table(rows)),
        ("LLM-shaped load", llm_table(rows)),
        ("Latency at low load", latency_table(rows)),
    ):
        if table.count("\n") > 1:
            print(f"\n{title}\n\n{table}")
    failed = failures(rows)
    if failed:
        print(f"\nFailures\n\n{failed}")


def write_all(summary: dict[str, Any], out_dir: Path, docs: bool) -> None:
    """Write the summary JSON, the chart and (if asked) the docs page."""
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    chart(summary["rows"], out_dir / "benchmarks.png")
    (out_dir / "benchmarks.md").write_text(markdown(summary, "benchmarks.png"))
    print_tables(summary)
    if docs:
        DOCS.mkdir(exist_ok=True)
        chart(summary["rows"], DOCS / "benchmarks.png")
        (DOCS / "benchmarks.md").write_text(markdown(summary, "benchmarks.png"))
        print(f"\nwrote {DOCS / 'benchmarks.md'} and {DOCS / 'benchmarks.png'}")
    print(f"results in {out_dir}")
