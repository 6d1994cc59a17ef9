"""The built-in tasks: importing this module registers them. Add a line per task module."""
from zoo.tasks import hashhop, lm, mqar  # noqa: F401
