"""Training tasks: each a deterministic stream of batches, registered by name."""
