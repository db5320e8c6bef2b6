"""The asyncio client: the same semantics on an event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asyncmesh import AsyncClient, Request, Result
from conftest import OLD_SECRET, SECRET, TRACE


@pytest.mark.parametrize("early", [False, True], ids=["callback after the 202", "callback before the 202"])
def test_handler_runs_once(sidecar_factory: Any, early: bool) -> None:
    sc = sidecar_factory(deliveries=3, early=early, sign_with=[SECRET, OLD_SECRET])

    async def main() -> list[Result]:
        got: list[Result] = []
        done = asyncio.Event()

        async def handler(r: Result) -> None:
            assert asyncio.get_running_loop() is loop  # on the client's loop
            got.append(r)
            done.set()

        loop = asyncio.get_running_loop()
        async with AsyncClient(sc.url, secrets=[OLD_SECRET]) as c:
            call = await c.do(Request("POST", "/slow", body=b"{}"), handler)
            assert call.id and call.trace_id == TRACE and call.access_token
            await asyncio.wait_for(done.wait(), 10)
            await asyncio.to_thread(sc.join)
        return got

    got = asyncio.run(main())
    assert len(got) == 1 and got[0].status == "completed" and got[0].response is not None and got[0].response.body == b"done"
    assert sc.callback_statuses == [204] * (4 if early else 3)


def test_plain_function_handler_and_wait(sidecar_factory: Any) -> None:
    sc = sidecar_factory(deliveries=1, polls_before_result=1)

    async def main() -> None:
        got: list[Result] = []
        async with AsyncClient(sc.url, secrets=[SECRET]) as c:
            call = await c.do(Request("POST", "/slow"), got.append)
            r = await c.wait(call, timeout=30)
            assert r.id == call.id and r.status == "completed"
            await asyncio.to_thread(sc.join)
            for _ in range(100):  # the handler is scheduled on this loop
                if got:
                    break
                await asyncio.sleep(0.01)
            assert [g.id for g in got] == [call.id]

    asyncio.run(main())


def test_prefer_wait(sidecar_factory: Any) -> None:
    sc = sidecar_factory()

    async def main() -> None:
        ran: list[Result] = []
        async with AsyncClient(sc.url, secrets=[SECRET]) as c:
            call = await c.do(Request("POST", "/slow"), ran.append, wait=3)
            assert call.sync is not None and call.sync.status == 201 and call.id
            await asyncio.to_thread(sc.join)
        assert ran == [] and sc.callback_statuses == [204]

    asyncio.run(main())


def test_handler_exception_is_logged_not_raised(sidecar_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    sc = sidecar_factory()

    async def main() -> None:
        async def bad(r: Result) -> None:
            raise RuntimeError("boom")

        async with AsyncClient(sc.url, secrets=[SECRET]) as c:
            await c.do(Request("POST", "/slow"), bad)
            await asyncio.to_thread(sc.join)

    asyncio.run(main())
    assert "handler of" in caplog.text and "boom" in caplog.text
