"""Imports the built-in tasks so they register. Add a line per task module."""
from zoo.tasks import hashhop, lm, mqar  # noqa: F401
