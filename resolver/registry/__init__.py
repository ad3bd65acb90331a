"""The per-network name registry: pure records, events and per-sandbox views (no I/O)."""
