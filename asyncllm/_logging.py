"""Log set-up for the command line: text or JSON lines, ids as fields.

Library code only creates loggers; handlers are configured here, by the CLI.
asyncllm passes ``request_id``, ``tenant_id``, ``handler``, ``attempt`` and
``queue`` in each record's ``extra``. The text format appends the ones that
are set as ``key=value``; the JSON format writes them as fields. Prompt and
response text is never logged above DEBUG, and at DEBUG only with
``--log-payloads``.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["FIELDS", "configure_logging"]

#: The fields asyncllm puts in ``extra``.
FIELDS = ("request_id", "tenant_id", "handler", "attempt", "queue")


class _TextFormatter(logging.Formatter):
    """The classic format plus the record's id fields as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        pairs = [
            f"{name}={getattr(record, name)}"
            for name in FIELDS
            if getattr(record, name, None) is not None
        ]
        return f"{text} [{' '.join(pairs)}]" if pairs else text


def _json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
    )


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send logs to standard error in the chosen format.

    Args:
        level: DEBUG, INFO, WARNING or ERROR.
        log_format: ``text`` or ``json`` (one object per line).
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_json_formatter())
    else:
        handler.setFormatter(
            _TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "werkzeug", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
