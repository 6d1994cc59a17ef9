"""Our own kernels (Triton) and backend helpers. Each kernel sits beside its torch reference."""
