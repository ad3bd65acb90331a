"""Privileged namespace operations: entering netns, binding sockets inside it, redirect rules."""
