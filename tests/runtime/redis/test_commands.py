"""The redis-py seam without a server: one exception map, URLs without passwords.

The map runs inside a task (it checks for a cancellation), hence the async tests.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from crdtcache import PeerError
from crdtcache.runtime.redis._commands import Commands, _glob_escape, redact_url


def commands() -> tuple[Commands, list[str]]:
    reasons: list[str] = []
    return Commands(
        "redis://:pw@127.0.0.1:1/0", client_name="t", on_unreachable=reasons.append
    ), reasons


@pytest.mark.parametrize(
    "exc",
    [RedisConnectionError("gone"), RedisTimeoutError("slow"), OSError("reset"), TimeoutError()],
)
async def test_a_failure_to_reach_redis_is_one_peer_error_and_reported(exc: Exception) -> None:
    cmds, reasons = commands()
    with pytest.raises(PeerError, match="unreachable") as info, cmds.mapped("GET"):
        raise exc
    assert info.value.__cause__ is exc
    assert reasons == [str(exc) or type(exc).__name__]
    assert "pw" not in str(info.value)


async def test_a_command_redis_refused_is_a_peer_error_naming_it() -> None:
    cmds, reasons = commands()
    with pytest.raises(PeerError, match="refused HGETALL: WRONGTYPE"), cmds.mapped("HGETALL"):
        raise ResponseError("WRONGTYPE")
    assert reasons == []  # refused is not unreachable


async def test_other_errors_are_not_translated() -> None:
    cmds, _ = commands()
    with pytest.raises(ZeroDivisionError), cmds.mapped("GET"):
        raise ZeroDivisionError


async def test_commands_before_connect_say_so() -> None:
    cmds, _ = commands()
    with pytest.raises(PeerError, match="not started"):
        await cmds.command("PING")


def test_redaction_and_scan_patterns() -> None:
    assert redact_url("redis://user:secret@host:6380/1") == "redis://user:***@host:6380/1"
    assert redact_url("rediss://:secret@host") == "rediss://:***@host"
    assert redact_url("redis://host") == "redis://host"
    assert _glob_escape(b"a*b?[c]\\") == b"a\\*b\\?\\[c\\]\\\\"


async def test_a_cancellation_redis_py_turned_into_an_error_is_raised_again() -> None:
    cmds, reasons = commands()

    async def victim() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            # What redis-py can do: swallow the cancel and fail the command instead.
            with cmds.mapped("GET"):
                raise RedisConnectionError("closed mid-command") from None

    task = asyncio.create_task(victim())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reasons == []
