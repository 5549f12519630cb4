"""The supervisor: every long-lived task is named and watched; the unexpected end of any one of
them makes `serve` exit non-zero, naming it (systemd then restarts the daemon)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog

from pdpj_async import daemon
from pdpj_async.config import Config, PdpjConfig
from pdpj_async.tasks import Supervisor, wait_event
from tests.fixtures.app import stack_config
from tests.fixtures.sandbox import Sandbox

# Every task the daemon supervises with the default config plus a watched token file. A task
# added to the daemon must be added here, so that its death is shown to end the daemon too.
SUPERVISED = [
    "access-log",
    "pacing-sync",
    "pdpj-token-refresh",
    "queue-claimer",
    "queue-completer",
    "queue-heartbeat",
    "queue-listener",
    "retention",
    "storage-sweeper",
    "token-gate",
    "webhook-listener",
    "webhook-recorder",
    "webhook-sender",
]


async def test_a_task_that_raises_is_reported_by_name() -> None:
    supervisor = Supervisor()

    async def boom() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("disk on fire")

    with structlog.testing.capture_logs() as logs:
        supervisor.start("boomer", boom())
        assert await asyncio.wait_for(supervisor.died, 5) == "boomer"
    (line,) = [entry for entry in logs if entry["event"] == "background_task_died"]
    assert line["task"] == "boomer" and "disk on fire" in line["error"]


async def test_a_task_that_returns_early_is_a_death_too() -> None:
    supervisor = Supervisor()

    async def quits() -> None:
        return None

    supervisor.start("quitter", quits())
    assert await asyncio.wait_for(supervisor.died, 5) == "quitter"


async def test_tasks_stopped_or_released_by_their_owner_end_quietly() -> None:
    supervisor = Supervisor()
    forever = supervisor.start("forever", asyncio.sleep(3600))
    finite = supervisor.start("finite", asyncio.sleep(3600))
    assert supervisor.names == ["finite", "forever"]
    await supervisor.stop(forever)
    supervisor.release(finite)
    finite.cancel()
    await asyncio.sleep(0.05)
    assert not supervisor.died.done() and supervisor.names == []


def daemon_config(
    db_dsn: str, tmp_path: Path, pdpj_config: PdpjConfig, sandbox: Sandbox, port: int
) -> Config:
    """The in-process stack's config, the PDPJ token read from a watched file."""
    token_file = tmp_path / "pdpj.token"
    token_file.write_text(sandbox.token)
    token_file.chmod(0o600)
    pdpj = msgspec.structs.replace(pdpj_config, token="", token_file=str(token_file))
    return stack_config(db_dsn, tmp_path, pdpj, port)


@pytest.mark.parametrize("name", SUPERVISED)
async def test_killing_a_supervised_task_makes_serve_exit_non_zero_naming_it(
    name: str,
    db_dsn: str,
    tmp_path: Path,
    pdpj_config: PdpjConfig,
    sandbox: Sandbox,
    unused_tcp_port_factory: Any,
) -> None:
    config = daemon_config(db_dsn, tmp_path, pdpj_config, sandbox, unused_tcp_port_factory())
    ready = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        serving = asyncio.create_task(daemon.serve(config, on_ready=ready.set))
        await asyncio.wait_for(ready.wait(), 30)
        running = {t.get_name(): t for t in asyncio.all_tasks()}
        assert set(SUPERVISED) <= set(running), sorted(set(SUPERVISED) - set(running))
        running[name].cancel()  # killed from outside: nobody asked it to stop
        code = await asyncio.wait_for(serving, 60)
    assert code == 1
    died = [e for e in logs if e["event"] == "background_task_died"]
    assert [e["task"] for e in died] == [name]
    exiting = [e for e in logs if e["event"] == "daemon_exiting"]
    assert exiting and exiting[0]["task"] == name


async def test_a_cancel_landing_as_the_awaited_event_is_set_still_stops_the_waiter() -> None:
    # Python 3.11's asyncio.wait_for returns normally here, and a stopped loop ran on.
    event, ran_on = asyncio.Event(), []

    async def loop_body() -> None:
        await wait_event(event, 10.0)
        ran_on.append(True)

    task = asyncio.create_task(loop_body())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ran_on == []


async def test_wait_event_says_whether_the_event_came_or_the_time_ran_out() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True
