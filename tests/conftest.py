"""Shared fixtures: small modality dims, a small Tier 1 config, synthetic batches and site folders.

Site folders follow the site-data contract: ``patients.csv`` (patient_id,time,event,split[,context])
and one ``<modality>/<patient_id>.npy`` float32 bag [n_instances, dim] per present modality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from rmmfed.core.config import Tier1Config
from rmmfed.core.privacy.site_policy import PHASES, phases_line

DIMS = {"a": 5, "b": 4, "c": 3}
SPLIT_CYCLE = ("train", "train", "train", "val", "test")
# a policy file's text: the default policy plus the opt-in per-round validation (model selection, Tier 2's gate)
WITH_VALIDATION = phases_line([p for p in PHASES if p != "cox"])


@pytest.fixture
def single_thread():
    """Run tiny models on one thread (faster and steadier than contended multi-threading)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def dims() -> dict[str, int]:
    """Three small modalities, sorted by name (as the run's schema is)."""
    return dict(DIMS)


@pytest.fixture
def tier1_cfg() -> Tier1Config:
    """A tiny Tier 1 model: every component switched on, dropout > 0 for MC dropout; its linear path
    trained with the network (the Cox core, fixed by a federation's Cox phase: tests/test_cox_core.py)."""
    return Tier1Config(embed_dim=8, prompt_dim=3, attn_dim=4, hidden_dim=16, dropout=0.2,
                       mc_samples=6, max_instances=6, anat_partitions=2, anat_kappa=2.0, cox_core=False)


def make_batch(dims: dict[str, int], batch: int, max_len: int, seed: int,
               present: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Seeded padded bags: x[k] [B, L, D_k], inst_mask[k] [B, L] (1..L real instances when present,
    none when absent), present [B, K] (random with at least one per patient unless given)."""
    g = torch.Generator().manual_seed(seed)
    k = len(dims)
    if present is None:
        present = torch.rand(batch, k, generator=g) < 0.6
        present[torch.arange(batch), torch.randint(0, k, (batch,), generator=g)] = True
    xs, masks = [], []
    for j, d in enumerate(dims.values()):
        lengths = torch.randint(1, max_len + 1, (batch,), generator=g) * present[:, j]
        mask = torch.arange(max_len).unsqueeze(0) < lengths.unsqueeze(1)
        x = torch.randn(batch, max_len, d, generator=g) * mask.unsqueeze(-1)
        xs.append(x)
        masks.append(mask)
    return xs, masks, present.clone()


@pytest.fixture
def batch_factory() -> Callable[..., tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]]:
    return make_batch


def write_site(root: Path, *, name: str = "site-A", n: int = 60, dims: dict[str, int] | None = None,
               seed: int = 0, absent_rate: float = 0.35, always: tuple[str, ...] = ("a",),
               signal: str = "a", n_empty: int = 0, contexts: tuple[str, ...] | None = ("", "", "", "oncology-staging"),
               max_instances: int = 5) -> Path:
    """Write a synthetic site folder and return its path.

    Risk is driven by one latent u per patient, visible only in modality ``signal`` (u is added to
    every instance's first feature); survival time = 10 exp(-1.5 u + noise). Modalities in
    ``always`` are present for every patient, the others are absent with ``absent_rate``; every
    fourth patient is complete; the last ``n_empty`` patients have no file at all. Splits cycle
    train/train/train/val/test; contexts cycle through ``contexts`` (None = no context column).
    """
    dims = dict(DIMS if dims is None else dims)
    rng = np.random.default_rng(seed)
    site = Path(root) / name
    site.mkdir(parents=True)
    u = rng.normal(size=n)
    time = 10.0 * np.exp(-1.5 * u + 0.2 * rng.normal(size=n))
    event = (rng.random(n) < 0.8).astype(int)
    event[:2] = 1
    lines = ["patient_id,time,event,split" + (",context" if contexts is not None else "")]
    for i in range(n):
        row = f"p{i:03d},{time[i]:.6f},{event[i]},{SPLIT_CYCLE[i % len(SPLIT_CYCLE)]}"
        if contexts is not None:
            row += f",{contexts[i % len(contexts)]}"
        lines.append(row)
    (site / "patients.csv").write_text("\n".join(lines) + "\n")
    for m, d in dims.items():
        folder = site / m
        folder.mkdir()
        for i in range(n):
            if i >= n - n_empty:
                continue
            if m not in always and i % 4 != 0 and rng.random() < absent_rate:
                continue
            bag = rng.normal(size=(int(rng.integers(1, max_instances + 1)), d))
            if m == signal:
                bag[:, 0] += 2.0 * u[i]
            np.save(folder / f"p{i:03d}.npy", bag.astype(np.float32))
    return site


@pytest.fixture
def site_factory(tmp_path: Path) -> Callable[..., Path]:
    """``site_factory(**kwargs)`` writes a synthetic site under tmp_path (see :func:`write_site`)."""

    def make(**kwargs) -> Path:
        return write_site(tmp_path, **kwargs)

    return make



def toy_policy(cohort: Path, seeded_noise: bool = False) -> Path:
    """Give every site of a toy cohort a ``policy.toml`` with a floor of 2 patients (the default 10
    is sized for real sites: a 30-patient test site has 2-3 held-out complete cases)."""
    from rmmfed.simulations.toy_policy import lower_floor

    lower_floor(cohort, 2, "toy-sized test sites", seeded_noise=seeded_noise)
    return Path(cohort)
