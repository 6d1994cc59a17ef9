"""The shared trainer: one small module per job (loop, schedules, checkpoints, logging)."""
