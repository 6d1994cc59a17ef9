"""Orchestration: the experiment spec and its plan, the sweep that trains and evaluates each
planned run, and the launchers (worker processes, GPUs, Ray) that decide where runs execute."""
