"""Benchmarks (not tests): run as scripts, print numbers and ratios."""
