"""ReplyWatch: a registered socket's future completes when a datagram arrives, fails with TimeoutError at
its deadline, and a re-arm after the timer already ran past its deadline still times out."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref

from resolver.server.upstream import ReplyWatch


def _pair() -> tuple[socket.socket, socket.socket]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    return receiver, sender


async def _scenario() -> list[str]:
    loop = asyncio.get_running_loop()
    watch = ReplyWatch(loop)
    receiver, sender = _pair()
    seen = []
    try:
        fd = receiver.fileno()
        deadline = loop.time() + 0.2
        ready = watch.readable(fd, True, deadline)
        sender.send(b"first")
        await asyncio.wait_for(ready, 2)
        seen.append(receiver.recv(100).decode())
        await asyncio.sleep(0.3)  # past the deadline: the timer ran and found nothing pending
        late = watch.readable(fd, False, deadline)
        await asyncio.wait({late}, timeout=5)
        assert late.done(), "a re-arm past its deadline was never timed out"
        assert isinstance(late.exception(), TimeoutError)
        seen.append("timed out")
        again = watch.readable(fd, False, loop.time() + 5)
        sender.send(b"second")
        await asyncio.wait_for(again, 2)
        seen.append(receiver.recv(100).decode())
        watch.forget(fd)
    finally:
        watch.close()
        receiver.close()
        sender.close()
    return seen


def test_reply_watch_wakes_times_out_and_rearms() -> None:
    assert asyncio.run(_scenario()) == ["first", "timed out", "second"]


class _Waiter:
    def __init__(self) -> None:
        self.result: str | None = None

    def done(self) -> bool:
        return self.result is not None

    def set_result(self, _result: None) -> None:
        self.result = "readable"

    def set_exception(self, _exception: BaseException) -> None:
        self.result = "timeout"


async def _finished_waiter_is_freed() -> tuple[str | None, bool, str | None]:
    loop = asyncio.get_running_loop()
    watch = ReplyWatch(loop, tick=0.01)
    receiver, sender = _pair()
    try:
        start = loop.time()
        waiter = _Waiter()
        watch.wait(receiver.fileno(), waiter, True, start + 1.0)
        sender.send(b"reply")
        for _ in range(200):
            await asyncio.sleep(0.01)
            if waiter.done():
                break
        watch.forget(receiver.fileno())
        receiver.recv(100)
        seen = waiter.result
        ref = weakref.ref(waiter)
        del waiter
        gc.collect()
        freed = ref() is None and loop.time() < start + 1.0  # its pending deadline holds no reference
        late = _Waiter()
        watch.wait(receiver.fileno(), late, False, start + 1.2)  # a new socket on the same number
        for _ in range(300):
            await asyncio.sleep(0.01)
            if late.done():
                break
        return seen, freed, late.result
    finally:
        watch.close()
        receiver.close()
        sender.close()


def test_a_finished_exchange_is_freed_before_its_deadline_and_a_reused_number_keeps_its_own() -> None:
    seen, freed, late = asyncio.run(_finished_waiter_is_freed())
    assert seen == "readable"
    assert freed, "the deadline queue kept a finished waiter alive"
    assert late == "timeout", "a later registration on the same fd number lost its own deadline"
