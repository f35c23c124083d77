"""Which FQ-ViT component helps or hurts: fqvit-<bits> with one component switched back to plain.

Run: .venv/bin/python benchmarks/fqvit_ablation.py MODEL BITS [TEST_IMAGES]   (e.g. vit-fmnist w4a8 10000)
"""

import dataclasses
import sys

import torch

from vitcompress.config import QuantSpec, get_preset
from vitcompress.jobs import JobConfig, run_job
from vitcompress.models.source import ModelSource

torch.set_num_threads(2)
model, bits = sys.argv[1], sys.argv[2]
base = get_preset(f"fqvit-{bits}")
a = base.act.bits
variants = {
    "fqvit": base,
    "minmax act": dataclasses.replace(
        base, act=dataclasses.replace(base.act, observer="minmax"), qkv=dataclasses.replace(base.qkv, observer="minmax")
    ),
    "uniform probs": dataclasses.replace(base, probs=QuantSpec(a, "asymmetric")),
    "uniform norm": dataclasses.replace(base, norm=QuantSpec(a, "asymmetric", observer="omse")),
    "no bias corr": dataclasses.replace(base, bias_correction=False),
}
limit = int(sys.argv[3]) if len(sys.argv) > 3 else None
for k, r in variants.items():
    m = run_job(JobConfig(ModelSource(model), calib_size=1000, limit=limit), r).metrics
    print(f"{model} {bits} {k:<14} {m['q_top1']:.2f} (fp {m['fp_top1']:.2f})", flush=True)
