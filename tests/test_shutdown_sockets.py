"""Shutdown leaves no connection to PostgreSQL half-open, even one the pool was still opening."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from aiohttp.test_utils import TestClient, TestServer

from pdpj_async.app import create_app
from pdpj_async.server import appkeys
from tests.fixtures.app import make_config


class SlowProxy:
    """A TCP proxy on 127.0.0.1 to the server's Unix socket; its replies can be held back."""

    def __init__(self, unix_path: str) -> None:
        self.unix_path = unix_path
        self.delay_s = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.unix_path)
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer, slow=False)),
            asyncio.create_task(self._pipe(up_reader, writer, slow=True)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            writer.close()
            up_writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, slow: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if slow and self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()


def sockets_to(port: int) -> int:
    """How many sockets of this process are connected to 127.0.0.1:`port`."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=int(name))
            try:
                count += sock.family == socket.AF_INET and sock.getpeername() == ("127.0.0.1", port)
            except OSError:
                pass
            finally:
                sock.detach()
    return count


def through(dsn: str, port: int) -> str:
    """The DSN of the same database, reached through 127.0.0.1:`port`."""
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(("postgresql", f"{userinfo}@127.0.0.1:{port}", parts.path, "", ""))


def unix_socket(dsn: str) -> str:
    directory = Path(parse_qs(urlsplit(dsn).query)["host"][0])
    (path,) = [p for p in directory.glob(".s.PGSQL.*") if not p.name.endswith(".lock")]
    return str(path)


async def test_an_app_stopped_while_its_pool_opens_connections_leaves_no_socket_open(
    db_dsn: str, tmp_path: Path
) -> None:
    proxy = SlowProxy(unix_socket(db_dsn))
    await proxy.start()
    # Without workers and sender the shutdown is quick: the pool closes while handshakes last.
    config = make_config(through(db_dsn, proxy.port), tmp_path)
    app = create_app(config, workers=False, sender=False)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        pool = app[appkeys.POOL]
        # From now on each reply of the server takes a second: a handshake takes seconds.
        proxy.delay_s = 1.0
        # Queries begun as shutdown starts: the pool opens new connections for them.
        late = [asyncio.create_task(pool.fetchval("SELECT 1")) for _ in range(3)]
        await asyncio.sleep(0.2)
        assert sockets_to(proxy.port) > 1  # the handshakes are under way
    finally:
        await client.close()

    assert sockets_to(proxy.port) == 0
    await asyncio.gather(*late, return_exceptions=True)
    await proxy.close()
