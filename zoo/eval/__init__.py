"""Evaluators: HashHop, perplexity vs length, speed and memory."""
