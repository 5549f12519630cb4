"""Bearer tokens: static, watched file, and the refresh grant against a fake single sign-on."""

from __future__ import annotations

import asyncio
import errno
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pdpj_async.config import PdpjConfig
from pdpj_async.errors import ConfigError
from pdpj_async.upstream import tokens
from pdpj_async.upstream.tokens import (
    FileTokenProvider,
    RefreshTokenProvider,
    TokenProvider,
    jwt_expiry,
    token_provider_from_config,
)
from tests.fixtures.sandbox import FakeSso, make_jwt


def test_jwt_expiry_is_read_without_verification() -> None:
    assert jwt_expiry(make_jwt(1_900_000_000)) == datetime.fromtimestamp(1_900_000_000, UTC)
    assert jwt_expiry(make_jwt()) is None
    assert jwt_expiry("opaque-token") is None
    assert jwt_expiry("a.!!!.c") is None


def test_state_follows_the_token_and_its_expiry() -> None:
    assert TokenProvider().state == "missing"
    assert TokenProvider(make_jwt(time.time() - 10)).state == "expired"
    fresh = make_jwt(time.time() + 3600)
    provider = TokenProvider(fresh)
    assert (provider.state, provider.current()) == ("valid", fresh)
    assert provider.expires_at is not None
    states = []
    for token in ("some other token", fresh):
        provider.mark_expired(token)
        states.append(provider.state)
    assert states == ["valid", "expired"]


async def test_waiting_for_a_token_that_never_comes_gives_up() -> None:
    provider = TokenProvider("dead")
    provider.mark_expired("dead")
    assert not await provider.wait_for_valid(timeout=0.1)


async def test_token_file_replaced_on_disk_is_picked_up_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "pdpj.token"
    path.write_text("first-token\n")
    provider = FileTokenProvider(path, poll_s=0.05)
    await provider.start()
    try:
        assert provider.current() == "first-token"
        provider.mark_expired("first-token")
        waiter = asyncio.create_task(provider.wait_for_valid(timeout=10))
        replacement = tmp_path / "new.token"
        replacement.write_text("second-token\n")
        replacement.replace(path)
        assert await waiter
        assert (provider.current(), provider.state) == ("second-token", "valid")
    finally:
        await provider.stop()


async def test_token_file_appearing_later_ends_the_missing_state(tmp_path: Path) -> None:
    path = tmp_path / "later.token"
    provider = FileTokenProvider(path, poll_s=0.05)
    await provider.start()
    try:
        assert provider.state == "missing"
        path.write_text(make_jwt(time.time() + 600))
        assert await provider.wait_for_valid(timeout=10)
    finally:
        await provider.stop()


def test_reload_rereads_the_file_at_once_and_never_logs_the_token(tmp_path: Path) -> None:
    path = tmp_path / "pdpj.token"
    path.write_text("secret-one")
    path.chmod(0o600)
    provider = FileTokenProvider(path, poll_s=3600)
    path.write_text("Bearer secret-two\n")
    with capture_logs() as logs:
        provider.reload()
    assert provider.current() == "secret-two"
    assert logs and logs[0]["event"] == "pdpj_token_loaded"
    assert "secret" not in repr(logs)


async def test_refresh_grant_gets_a_token_and_writes_back_the_new_refresh_token(
    fake_sso: FakeSso, tmp_path: Path
) -> None:
    refresh_file = tmp_path / "refresh.token"
    refresh_file.write_text(fake_sso.refresh_token)
    provider = RefreshTokenProvider(fake_sso.url, fake_sso.client_id, refresh_file)
    await provider.start()
    try:
        assert await provider.wait_for_valid(timeout=10)
        assert provider.current() == fake_sso.issued[-1]
        assert refresh_file.read_text().strip() == fake_sso.refresh_token
        assert oct(refresh_file.stat().st_mode & 0o777) == "0o600"
    finally:
        await provider.stop()


async def test_expired_jwt_is_refreshed_through_the_refresh_grant(
    fake_sso: FakeSso, tmp_path: Path
) -> None:
    refresh_file = tmp_path / "refresh.token"
    refresh_file.write_text(fake_sso.refresh_token)
    provider = RefreshTokenProvider(fake_sso.url, fake_sso.client_id, refresh_file)
    await provider.start()
    try:
        assert await provider.wait_for_valid(timeout=10)
        first = provider.current()
        assert first is not None
        provider.mark_expired(first)  # what the client does on a 401
        assert await provider.wait_for_valid(timeout=10)
        assert provider.current() != first and fake_sso.grants == 2
    finally:
        await provider.stop()


async def test_a_token_is_refreshed_before_its_exp(fake_sso: FakeSso, tmp_path: Path) -> None:
    fake_sso.lifetime_s = 32
    refresh_file = tmp_path / "refresh.token"
    refresh_file.write_text(fake_sso.refresh_token)
    # With a margin of 30 s a 32 s token is due for refresh a second or two after it arrives.
    provider = RefreshTokenProvider(fake_sso.url, fake_sso.client_id, refresh_file, margin_s=30)
    await provider.start()
    try:
        async with asyncio.timeout(10), fake_sso.granted:
            await fake_sso.granted.wait_for(lambda: fake_sso.grants >= 2)
        assert provider.state == "valid"
    finally:
        await provider.stop()


async def test_a_refused_refresh_leaves_the_token_missing(
    fake_sso: FakeSso, tmp_path: Path
) -> None:
    refresh_file = tmp_path / "refresh.token"
    refresh_file.write_text("revoked-refresh-token")
    provider = RefreshTokenProvider(fake_sso.url, fake_sso.client_id, refresh_file)
    with capture_logs() as logs:
        await provider.start()
        try:
            assert not await provider.wait_for_valid(timeout=0.3)
        finally:
            await provider.stop()
    failures = [e for e in logs if e["event"] == "pdpj_token_refresh_failed"]
    assert failures and "invalid_grant" in failures[0]["detail"]
    assert "revoked-refresh-token" not in repr(logs)


def test_the_config_picks_the_provider(tmp_path: Path) -> None:
    assert type(token_provider_from_config(PdpjConfig(token="t"))) is TokenProvider
    file_config = PdpjConfig(token_file=str(tmp_path / "t"))
    assert isinstance(token_provider_from_config(file_config), FileTokenProvider)
    sso = PdpjConfig(
        sso_token_url="http://127.0.0.1:1/token",
        sso_client_id="c",
        refresh_token_file=str(tmp_path / "r"),
    )
    assert isinstance(token_provider_from_config(sso), RefreshTokenProvider)
    with pytest.raises(ConfigError, match="sso_client_id"):
        token_provider_from_config(PdpjConfig(sso_token_url="http://127.0.0.1:1/token"))


def test_the_token_url_must_be_https_except_on_loopback(tmp_path: Path) -> None:
    def sso(url: str) -> PdpjConfig:
        return PdpjConfig(sso_token_url=url, sso_client_id="c", refresh_token_file=str(tmp_path))

    for url in ("http://sso.example.org/token", "ftp://sso.example.org/token", "https:///t"):
        with pytest.raises(ConfigError, match=r"pdpj\.sso_token_url: must be an https"):
            token_provider_from_config(sso(url))
    for url in ("https://sso.cloud.pje.jus.br/t", "http://127.0.0.1:1/t", "http://[::1]:1/t"):
        assert isinstance(token_provider_from_config(sso(url)), RefreshTokenProvider)


async def test_the_new_access_token_is_used_even_when_the_refresh_token_cannot_be_saved(
    fake_sso: FakeSso, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh file on a read-only path (as under ProtectSystem=strict) lost the access token."""

    def read_only(path: Path, data: bytes, *, replace: bool = True) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(tokens, "publish_private", read_only)
    refresh_file = tmp_path / "refresh.token"
    refresh_file.write_text(fake_sso.refresh_token)
    refresh_file.chmod(0o600)
    provider = RefreshTokenProvider(fake_sso.url, fake_sso.client_id, refresh_file)
    with capture_logs() as logs:
        await provider.start()
        try:
            assert await provider.wait_for_valid(timeout=10)
            assert provider.current() == fake_sso.issued[-1]
            # The rotated refresh token lives on in memory: the next grant still works.
            provider.mark_expired(fake_sso.issued[-1])
            assert await provider.wait_for_valid(timeout=10)
            assert fake_sso.grants == 2
        finally:
            await provider.stop()
    assert [e for e in logs if e["event"] == "pdpj_refresh_token_not_saved"]
    assert fake_sso.refresh_token not in repr(logs)


async def test_the_refresh_token_is_never_written_through_a_planted_symlink(
    fake_sso: FakeSso, tmp_path: Path
) -> None:
    refresh_file = tmp_path / "refresh.token"
    refresh_file.write_text(fake_sso.refresh_token)
    refresh_file.chmod(0o600)
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    # The temp file name the old code always used.
    (tmp_path / ".refresh.token.tmp").symlink_to(victim)
    provider = RefreshTokenProvider(fake_sso.url, fake_sso.client_id, refresh_file)
    await provider.start()
    try:
        assert await provider.wait_for_valid(timeout=10)
    finally:
        await provider.stop()
    assert victim.read_text() == "untouched\n"
    assert refresh_file.read_text().strip() == fake_sso.refresh_token
    assert oct(refresh_file.stat().st_mode & 0o777) == "0o600" and not refresh_file.is_symlink()
    assert names_in(tmp_path) == {"refresh.token", "victim", ".refresh.token.tmp"}


def names_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_a_token_file_readable_by_others_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "pdpj.token"
    path.write_text("a-token")
    path.chmod(0o644)
    with capture_logs() as logs:
        FileTokenProvider(path, poll_s=3600)
    warnings = [e for e in logs if e["event"] == "pdpj_token_file_readable_by_others"]
    assert warnings and warnings[0]["mode"] == "0o644" and warnings[0]["path"] == str(path)
    path.chmod(0o600)
    with capture_logs() as logs:
        FileTokenProvider(path, poll_s=3600)
    assert not [e for e in logs if e["event"] == "pdpj_token_file_readable_by_others"]
