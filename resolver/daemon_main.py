"""Starting the daemon process: logging, the event loop (uvloop when installed), exit status."""

from __future__ import annotations

import asyncio
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


def run(settings: Settings, config_file: str | None, flags: dict[str, Any]) -> int:
    from resolver.app import Daemon

    logsetup.setup(settings.log_level, settings.log_format)

    async def main() -> None:
        await Daemon(settings, config_file, flags).run()

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main())
    except Exception:
        logging.getLogger("resolver.daemon").exception("the daemon failed")
        return 1
    return 0
