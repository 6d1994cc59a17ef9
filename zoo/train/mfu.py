"""Device peaks for MFU (model FLOPs utilisation).

MFU = achieved FLOP/s / peak FLOP/s, with achieved FLOPs from the model's own estimate
(`ZooLM.flops_per_token`: matmuls at 2 FLOPs per multiply-add, attention over the average
causal context, forward + backward = 3x forward). The peak is the dense (no sparsity)
datasheet number for the precision in use; `--peak-tflops` overrides it. CPUs have no
stated peak, so MFU is not reported there unless a peak is given.
"""

from __future__ import annotations

import torch

# dense bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s; first match wins
BF16_PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),   # SXM5 (HBM3)
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
]


def device_peak_flops(device: torch.device, precision: str, override_tflops: float | None = None
                      ) -> tuple[float | None, str]:
    """(peak FLOP/s or None, where the number comes from)."""
    if override_tflops is not None:
        return override_tflops * 1e12, f"{override_tflops:g} TFLOP/s (given)"
    if device.type != "cuda" or precision != "bf16":
        return None, "no stated peak for this device and precision"
    name = torch.cuda.get_device_name(device)
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{tflops:g} TFLOP/s ({key} dense bf16 datasheet)"
    return None, f"no datasheet peak known for {name}; pass peak_tflops"
