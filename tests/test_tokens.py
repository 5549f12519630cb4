"""Bearer tokens: static, watched file, and the refresh grant against a fake single sign-on."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pdpj_async.config import PdpjConfig
from pdpj_async.errors import ConfigError
from pdpj_async.tokens import (
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
