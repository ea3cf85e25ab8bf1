"""A minimal HTTP/1.1 server that answers every request with the same small JSON
response. It costs next to nothing per request, so a saturation search against it
measures the load generator's own ceiling."""

from __future__ import annotations

import argparse
import asyncio

import uvloop

RESPONSE = (
    b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'
)


def request_end(buffer: bytearray) -> int:
    """Offset just past the first complete request in `buffer`, or -1."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return -1
    head = bytes(buffer[:head_end]).lower()
    length_at = head.find(b"\r\ncontent-length:")
    length = 0
    if length_at >= 0:
        line_end = head.find(b"\r\n", length_at + 2)
        length = int(head[length_at + 17 : line_end if line_end >= 0 else None])
    end = head_end + 4 + length
    return end if len(buffer) >= end else -1


class ConstantResponder(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answers = 0
        try:
            while (end := request_end(self.buffer)) >= 0:
                del self.buffer[:end]
                answers += 1
        except ValueError:
            self.transport.close()  # type: ignore[union-attr]
            return
        if answers:
            self.transport.write(RESPONSE * answers)  # type: ignore[union-attr]


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(ConstantResponder, host, port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.constant_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
