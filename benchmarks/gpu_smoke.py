"""First look at a GPU machine: every registered mixer's usable backends against the torch
reference in bf16 on CUDA, and the device ceilings (bf16 matmul, device-to-device copy).

    python benchmarks/gpu_smoke.py
"""

from __future__ import annotations

import json
import os

import torch

from zoo import registry
from zoo.bench.timing import Timer
from zoo.conformance import make


def ceilings() -> dict:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(2**30 // 2, device="cuda", dtype=torch.bfloat16)  # 1 GiB
    y = torch.empty_like(x)

    def timed(fn, reps=20):
        return Timer("cuda").median(fn, warmup=3, reps=reps)

    t_mm = timed(lambda: a @ b)
    t_cp = timed(lambda: y.copy_(x))
    return {"matmul_tflops": 2 * 8192**3 / t_mm / 1e12, "copy_gbps": 2 * x.numel() * 2 / t_cp / 1e9}


def backends_vs_reference() -> list[dict]:
    rows = []
    for spec in registry.specs():
        ref = make(spec).cuda().to(torch.bfloat16)
        x = torch.randn(2, 256, 32, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            want = ref.float()(x.float())
            for b in spec.backends:
                why = b.check(torch.device("cuda"))
                if why is not None:
                    rows.append({"mixer": spec.name, "backend": b.name, "status": why})
                    continue
                m = make(spec, backend=b.name).cuda().to(torch.bfloat16)
                m.load_state_dict(ref.state_dict())
                got = m(x).float()
                rel = ((got - want).norm() / want.norm()).item()
                rows.append({"mixer": spec.name, "backend": b.name, "rel_err_bf16": rel, "ok": rel < 2e-2})
    return rows


if __name__ == "__main__":
    out = {"device": torch.cuda.get_device_name(), "ceilings": ceilings(), "backends": backends_vs_reference()}
    print(json.dumps(out, indent=1))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_smoke.json"), "w") as f:
            json.dump(out, f, indent=1)
