"""One HTTP/1.1 exchange over a plain socket, for requests a client library would refuse to send."""

from __future__ import annotations

import socket


def exchange(port: int, head: bytes, *, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (request line and header fields, without the blank line) with ``Connection: close``;
    return the status, the lowercase headers and the body. The server must close or send Content-Length."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body
