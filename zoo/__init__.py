"""mixer-zoo: compare sequence mixers on long context inside one LM, one trainer and one
HashHop evaluator. `import zoo` is cheap: optional kernels are imported only when used."""

__version__ = "0.1.0"
