"""Imports the built-in tasks so they register. Add a line per task module."""
