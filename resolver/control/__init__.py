"""The control plane: HTTP+JSON on a root-only Unix socket (server) and its standard-library client."""
