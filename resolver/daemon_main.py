"""Starting the daemon process: logging, the event loop (uvloop when installed), exit status."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

from resolver import log as logsetup
from resolver.config import Settings


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


GC_THRESHOLDS = (10_000, 20, 100)
"""Young collections every 10,000 allocations instead of 700: a forwarded query's objects (task,
coroutines, futures, sockets) are mostly gone before a collection looks at them, instead of being
promoted while in flight and traversed again by the older generations."""


def _tune_gc() -> None:
    """Move everything start-up made (modules, classes, settings) out of the collector's sight
    (gc.freeze) and collect the young generation less often: measured on the forwarding path, about
    a quarter less CPU per forwarded query."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(settings: Settings, config_file: str | None, flags: dict[str, Any]) -> int:
    from resolver.app import Daemon

    logsetup.setup(settings.log_level, settings.log_format)

    async def main() -> None:
        await Daemon(settings, config_file, flags).run()

    _tune_gc()

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main())
    except Exception:
        logging.getLogger("resolver.daemon").exception("the daemon failed")
        return 1
    return 0
