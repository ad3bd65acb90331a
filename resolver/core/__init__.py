"""The answering core: wire bytes, a view, a cache and `now` in; a Reply, Forward or Drop out (no I/O)."""
