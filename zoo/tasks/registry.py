"""Imports the built-in tasks so they register. Add a line per task module."""
from zoo.tasks import lm  # noqa: F401
