"""A fake OpenAI-compatible chat-completions server on 127.0.0.1.

Every ``POST /v1/chat/completions`` is answered after a fixed delay (300 ms
by default) with a small completion, as a slow LLM provider would, over
HTTP/1.1 keep-alive connections. It is plain asyncio streams, so thousands of
concurrent calls cost it little. ``GET /stats`` reports how many calls it
answered and the most it held at once, which shows the concurrency a client
really reached; ``POST /stats/reset`` zeroes them. Run it with::

    python -m benchmarks.provider --port 8000 --delay-seconds 0.3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time

#: Longest request body read, a bound against a runaway client.
_MAX_BODY = 1 << 20


class FakeProvider:
    """Answers chat completions after ``delay_seconds``.

    Args:
        delay_seconds: How long each answer takes.
    """

    def __init__(self, delay_seconds: float) -> None:
        self.delay_seconds = delay_seconds
        self.answered = 0
        self.active = 0
        self.peak_active = 0

    async def serve(self, port: int) -> None:
        """Serve on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
        server = await asyncio.start_server(
            self._connection, "127.0.0.1", port, backlog=2048
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with server:
            await stop.wait()

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(
            ConnectionError, asyncio.IncompleteReadError, ValueError
        ):
            while await self._exchange(reader, writer):
                pass
        writer.close()

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; returns False when the connection should close."""
        line = await reader.readline()
        if not line:
            return False
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers = await _read_headers(reader)
        length = min(int(headers.get("content-length", "0")), _MAX_BODY)
        body = await reader.readexactly(length) if length else b""
        status, payload = await self._answer(method, path, body)
        writer.write(_response(status, payload))
        await writer.drain()
        return headers.get("connection", "").lower() != "close"

    async def _answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if method == "GET" and path == "/stats":
            return 200, self._stats()
        if method == "POST" and path == "/stats/reset":
            self.answered = self.peak_active = 0
            return 200, self._stats()
        if method == "POST" and path.endswith("/chat/completions"):
            return 200, await self._complete(body)
        return 404, b'{"error": {"message": "not found"}}'

    async def _complete(self, body: bytes) -> bytes:
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            await asyncio.sleep(self.delay_seconds)
        finally:
            self.active -= 1
        self.answered += 1
        model = json.loads(body or b"{}").get("model", "fake")
        return json.dumps(completion(model)).encode()

    def _stats(self) -> bytes:
        stats = {"answered": self.answered, "peak_concurrent": self.peak_active}
        return json.dumps(stats).encode()


def completion(model: str, text: str = "Hello.") -> dict[str, object]:
    """Return a chat completion in the OpenAI shape."""
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(100):
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raise ValueError("too many headers")


def _response(status: int, payload: bytes) -> bytes:
    reason = "OK" if status == 200 else "Not Found"
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: keep-alive\r\n\r\n"
    )
    return head.encode("latin-1") + payload


def main(argv: list[str] | None = None) -> None:
    """Run the fake provider until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-seconds", type=float, default=0.3)
    args = parser.parse_args(argv)
    asyncio.run(FakeProvider(args.delay_seconds).serve(args.port))


if __name__ == "__main__":
    main()
