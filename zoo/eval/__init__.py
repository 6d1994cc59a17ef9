"""Evaluators: HashHop and perplexity vs length (speed and memory: `zoo.bench`)."""
