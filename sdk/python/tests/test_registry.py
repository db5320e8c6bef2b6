"""The handler map's rules, without a network: once per request id, early
callbacks held within bounds, synchronous answers forgotten."""

from __future__ import annotations

import threading

from asyncmesh import Registry, Result


def res(rid: str) -> Result:
    return Result(id=rid, trace_id="t", status="completed")


def test_once_per_id_after_register() -> None:
    reg: Registry[str] = Registry()
    assert reg.register("a", "h") is None
    assert reg.deliver(res("a"), 10) == ("run", "h")
    for _ in range(3):  # at-least-once delivery: acknowledged, never run again
        assert reg.deliver(res("a"), 10) == ("duplicate", None)
    assert reg.pending() == 0


def test_callback_before_the_202_is_held_then_run_once() -> None:
    reg: Registry[str] = Registry()
    assert reg.deliver(res("a"), 10) == ("held", None)
    assert reg.held() == (1, 10)
    assert reg.deliver(res("a"), 10) == ("duplicate", None)
    early = reg.register("a", "h")
    assert early is not None and early.id == "a"
    assert reg.held() == (0, 0) and reg.pending() == 0
    assert reg.deliver(res("a"), 10) == ("duplicate", None)


def test_early_bounded_by_count_and_bytes() -> None:
    reg: Registry[str] = Registry(max_early=2, max_early_bytes=100)
    assert reg.deliver(res("a"), 50)[0] == "held"
    assert reg.deliver(res("b"), 50)[0] == "held"
    assert reg.deliver(res("c"), 1)[0] == "full"  # count
    assert reg.register("a", "h") is not None
    assert reg.deliver(res("d"), 51)[0] == "full"  # bytes
    assert reg.deliver(res("d"), 50)[0] == "held"
    # A refused callback was not marked seen: the collector's retry is taken.
    reg.register("c", "hc")
    assert reg.deliver(res("c"), 1) == ("run", "hc")


def test_early_expires() -> None:
    now = [0.0]
    reg: Registry[str] = Registry(max_early=1, early_ttl=120, clock=lambda: now[0])
    assert reg.deliver(res("a"), 1)[0] == "held"
    now[0] = 119
    assert reg.deliver(res("b"), 1)[0] == "full"
    now[0] = 120  # a's 202 was never read: dropped to make room
    assert reg.deliver(res("b"), 1)[0] == "held"
    assert reg.register("a", "h") is None
    assert reg.held() == (1, 1)


def test_forget_after_a_synchronous_answer() -> None:
    reg: Registry[str] = Registry()
    assert reg.deliver(res("a"), 5)[0] == "held"  # came before the answer
    reg.forget("a")
    assert reg.held() == (0, 0)
    reg.forget("b")  # or comes after it
    assert reg.deliver(res("b"), 5) == ("duplicate", None)


def test_seen_is_bounded() -> None:
    reg: Registry[str] = Registry(max_seen=3)
    for rid in "abcd":
        reg.register(rid, rid)
        assert reg.deliver(res(rid), 1)[0] == "run"
    assert reg.deliver(res("d"), 1) == ("duplicate", None)
    # "a" was forgotten (the oldest of more than 3): with no handler, a late
    # duplicate is held, not run.
    assert reg.deliver(res("a"), 1)[0] == "held"


def test_concurrent_deliveries_run_once() -> None:
    reg: Registry[int] = Registry()
    for i in range(200):
        reg.register(str(i), i)
    runs: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def deliver_all() -> None:
        start.wait()
        for i in range(200):
            what, h = reg.deliver(res(str(i)), 1)
            if what == "run":
                assert h is not None
                with lock:
                    runs.append(h)

    ts = [threading.Thread(target=deliver_all) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(runs) == list(range(200))
