"""Integration tests of forwarding: upstream servers, failover, safety, cache and limits (issue 4)."""
