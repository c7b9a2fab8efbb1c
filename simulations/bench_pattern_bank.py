"""What reusing Tier 1's frozen bag encodings saves Tier 2 on whole-slide bags.

    python -m rmmfed.simulations.bench_pattern_bank --patients 100 --patches 2250

Tier 2 reads Tier 1 under each of the 2^K - 1 observed patterns (core/tier2/tier2_context.PatternBank). Its
inputs (:func:`~rmmfed.core.tier2.tier2_context.tier2_inputs`) can encode every instance again for each
pattern, or take the encodings computed once (``zs=``, what rmm does). Both give the same tensors (a
test checks it bit for bit); this times them in one run on random bags at the model's reduced width
(16, the federated PCA's), default Tier 1 config, one thread.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from ..core.config import RunConfig
from ..core.data.tensors import SiteTensors
from ..core.model.tier1 import build_model
from ..core.tier2.tier2_context import bag_encodings
from ..core.tier2.tier2_context import tier2_inputs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", type=int, default=100)
    p.add_argument("--patches", type=int, default=2250, help="pathology instances per bag (radiology 72, report 10)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, d = args.patients, args.width
    lengths = (args.patches, 72, 10)
    dims = {"pathology": d, "radiology": d, "report": d}
    gen = torch.Generator().manual_seed(0)
    data = SiteTensors(tuple(dims), tuple(torch.randn(n, length, d, generator=gen) for length in lengths),
                       tuple(torch.ones(n, length, dtype=torch.bool) for length in lengths),
                       tuple(torch.randn(n, d, generator=gen) for _ in lengths), torch.ones(n, 3, dtype=torch.bool),
                       torch.rand(n, generator=gen) + 0.1, torch.ones(n), tuple([""] * n))
    model = build_model(dims, RunConfig().model, seed=0).eval()
    patterns = [torch.tensor(q) for q in itertools.product((True, False), repeat=3) if any(q)]

    t0 = time.perf_counter()
    for i, q in enumerate(patterns):
        tier2_inputs(model, data, data.present & q, seed=i)
    fresh = time.perf_counter() - t0
    t0 = time.perf_counter()
    zs = bag_encodings(model, data)
    for i, q in enumerate(patterns):
        tier2_inputs(model, data, data.present & q, seed=i, zs=zs)
    cached = time.perf_counter() - t0
    print(f"{len(patterns)} patterns, {n} patients x {args.patches} patches (width {d}), {args.threads} thread(s): "
          f"encoding per pattern {fresh:.2f} s, encodings reused {cached:.2f} s, {fresh / cached:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
