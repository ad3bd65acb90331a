"""Embedded DNS service-discovery resolver for container sandboxes.

One daemon answers DNS on 127.0.0.11 inside every sandbox (network namespace) that joined a network,
from a per-network registry of endpoints, services and tasks, and forwards everything else upstream.
"""

__version__ = "0.1.0"
