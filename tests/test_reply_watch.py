"""ReplyWatch: a registered socket's future completes when a datagram arrives, fails with TimeoutError at
its deadline, and a re-arm after the timer already ran past its deadline still times out."""

from __future__ import annotations

import asyncio
import socket

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
