"""Fuzzing harnesses (atheris) and the properties they share with the property tests."""
