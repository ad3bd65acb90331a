"""The I/O layer: per-sandbox UDP and TCP listeners, upstream exchanges, metrics (one asyncio loop)."""
