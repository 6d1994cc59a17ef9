"""An example mixer-zoo plugin: one mixer (`mixer.py`, `short-conv-glr`) and one task
(`selective_copy.py`, `selective-copy`), each registered through its own entry point."""
