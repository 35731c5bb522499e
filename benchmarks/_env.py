"""The environment every benchmark process runs in, and facts about the machine.

Every process the suite starts gets placeholder AWS credentials, instance
metadata turned off and no shared AWS config, so that no client can reach a
cloud endpoint or the metadata address by default; every client is also given
an explicit endpoint on 127.0.0.1.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path

#: The repository root: subprocesses run here, so ``benchmarks`` is importable.
ROOT = Path(__file__).resolve().parent.parent
#: The only address any server of the suite binds or any client talks to.
HOST = "127.0.0.1"
#: Placeholder credentials; moto checks none.
ACCESS_KEY = "bench"
SECRET_KEY = "bench"
REGION = "us-east-1"

#: Variables that could send a client elsewhere; never passed on.
_DROPPED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)

#: Packages whose versions the results name.
PACKAGES = (
    "asyncllm",
    "boto3",
    "botocore",
    "kombu",
    "celery",
    "pycurl",
    "dramatiq",
    "dramatiq-sqs",
    "moto",
    "httpx",
    "pydantic",
)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def child_env(sqs_port: int | None = None, **extra: str) -> dict[str, str]:
    """Return the environment for a process the suite starts.

    Args:
        sqs_port: The local SQS endpoint's port, set as the default SQS
            endpoint of every AWS SDK client in the process.
        **extra: More variables to set.
    """
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    env.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    if sqs_port is not None:
        env["AWS_ENDPOINT_URL_SQS"] = f"http://{HOST}:{sqs_port}"
    env.update(extra)
    return env


def make_safe() -> None:
    """Apply the same safety settings to the current process."""
    for name in _DROPPED:
        os.environ.pop(name, None)
    os.environ.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        NO_PROXY="127.0.0.1,localhost",
    )


def machine() -> dict[str, str]:
    """Describe this machine from /proc: CPU model, cores, memory, OS, Python."""
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count() or "?"),
        "memory": _memory(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
    }


def versions() -> dict[str, str]:
    """Return the installed version of each package the results depend on."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _memory() -> str:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            kib = int(line.split()[1])
            return f"{kib / 1024 / 1024:.1f} GiB"
    return "unknown"
