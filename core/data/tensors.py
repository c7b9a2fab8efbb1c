"""A site's patients as padded tensors: variable-length bags with instance masks.

Built once per site (bags standardised, and reduced where the run has a federated PCA basis, with the
federated :class:`FeatureStats`), then sliced by index for mini-batches, so no Python work happens
per batch. Every instance of every bag is kept (inference, calibration and attribution read all of
them); training draws a fresh subsample of at most ``model.max-instances`` per bag each epoch
(:meth:`SiteTensors.sample_instances`), and the inference loops cut a site into batches whose padded
instances stay under ``INSTANCE_BUDGET`` (:func:`patients_per_batch`), so memory follows the batch,
not the cohort. Bags are read from disk (core/data/bag_file.py) one at a time while building.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import numpy as np
import torch

from .bag_file import bag_rows
from ..errors import InstanceBudgetError
from ..aggregates.feature_stats import FeatureStats, pooled_features
from .site_data import SiteData


@dataclass(frozen=True)
class SiteTensors:
    """Patients x modalities. ``x[k]``: [N, L_k, D_k]; ``inst_mask[k]``: [N, L_k]; ``present``: [N, K]."""

    modalities: tuple[str, ...]
    x: tuple[torch.Tensor, ...]
    inst_mask: tuple[torch.Tensor, ...]
    target: tuple[torch.Tensor, ...]  # standardised (reduced) mean-pooled features [N, D_k] (0 where absent)
    present: torch.Tensor
    time: torch.Tensor
    event: torch.Tensor
    context: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.present.shape[0])

    def subset(self, idx: np.ndarray | torch.Tensor) -> "SiteTensors":
        idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long, device=self.present.device)
        idx_l = idx_t.tolist()
        return SiteTensors(
            self.modalities,
            tuple(t[idx_t] for t in self.x),
            tuple(t[idx_t] for t in self.inst_mask),
            tuple(t[idx_t] for t in self.target),
            self.present[idx_t],
            self.time[idx_t],
            self.event[idx_t],
            tuple(self.context[i] for i in idx_l),
        )

    def to(self, device: torch.device | str) -> "SiteTensors":
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                moved[f.name] = v.to(device)
            elif isinstance(v, tuple) and v and isinstance(v[0], torch.Tensor):
                moved[f.name] = tuple(t.to(device) for t in v)
        return replace(self, **moved)

    def sample_instances(self, k: int, generator: torch.Generator) -> "SiteTensors":
        """At most ``k`` instances per bag, drawn afresh from ``generator`` (CPU), kept in bag order; a bag
        of <= k instances is kept whole, and when every bag is that short ``self`` is returned as is."""
        if all(x.shape[1] <= k for x in self.x):
            return self
        xs, masks = [], []
        for x, mask in zip(self.x, self.inst_mask):
            if x.shape[1] <= k:
                xs.append(x), masks.append(mask)
                continue
            keys = torch.rand(mask.shape, generator=generator).to(mask.device) + mask.float()  # real ones first
            idx = keys.topk(k, dim=1).indices.sort(dim=1).values
            xs.append(torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[2])))
            masks.append(torch.gather(mask, 1, idx))
        return replace(self, x=tuple(xs), inst_mask=tuple(masks))

    @staticmethod
    def concat(parts: list["SiteTensors"]) -> "SiteTensors":
        """Stack several sites (pads bags to the longest); used only by the pooled reference."""
        k = len(parts[0].modalities)
        xs, masks = [], []
        for j in range(k):
            length = max(p.x[j].shape[1] for p in parts)
            xs.append(torch.cat([_pad(p.x[j], length) for p in parts]))
            masks.append(torch.cat([_pad(p.inst_mask[j], length) for p in parts]))
        return SiteTensors(
            parts[0].modalities,
            tuple(xs),
            tuple(masks),
            tuple(torch.cat([p.target[j] for p in parts]) for j in range(k)),
            torch.cat([p.present for p in parts]),
            torch.cat([p.time for p in parts]),
            torch.cat([p.event for p in parts]),
            tuple(c for p in parts for c in p.context),
        )


def _pad(t: torch.Tensor, length: int) -> torch.Tensor:
    if t.shape[1] == length:
        return t
    shape = list(t.shape)
    shape[1] = length - t.shape[1]
    return torch.cat([t, torch.zeros(shape, dtype=t.dtype, device=t.device)], dim=1)


INSTANCE_BUDGET = 1 << 19  # padded instances (all modalities together) in one inference batch
TENSOR_BUDGET_BYTES = 8 << 30  # one modality of one site, every instance kept, at the model's width


def patients_per_batch(data: SiteTensors, batch: int) -> int:
    """``batch``, lowered so one batch of ``data`` holds at most INSTANCE_BUDGET padded instances."""
    width = sum(int(x.shape[1]) for x in data.x)
    return max(1, min(batch, INSTANCE_BUDGET // max(width, 1)))


def build_tensors(site: SiteData, stats: FeatureStats, *, max_instances: Optional[int] = None,
                  seed: int = 0) -> SiteTensors:
    """Pad, standardise and (for a modality with a federated PCA basis) reduce a site. Every instance is
    kept unless ``max_instances`` is given: then a bag longer than that keeps a seeded subsample."""
    rng = np.random.default_rng(seed)
    max_instances = max_instances or None
    modalities = tuple(stats.mean)
    xs, masks, targets = [], [], []
    present = np.zeros((len(site.patient_ids), len(modalities)), dtype=bool)
    for k, m in enumerate(modalities):
        mean, std = stats.mean[m].astype(np.float32), stats.std[m].astype(np.float32)
        basis = stats.basis.get(m)
        basis = None if basis is None else basis.astype(np.float32)
        width = len(mean) if basis is None else basis.shape[1]
        bags = site.bags.get(m, [None] * len(site.patient_ids))
        lengths = [0 if b is None else min(len(b), max_instances or len(b)) for b in bags]
        length = max(1, max(lengths, default=1))
        need = len(bags) * length * width * 4
        if need > TENSOR_BUDGET_BYTES:
            raise InstanceBudgetError(
                f"site '{site.site}', modality '{m}': {len(bags)} bags of up to {length} instances at width {width} "
                f"need {need / 2**30:.1f} GiB in memory (budget {TENSOR_BUDGET_BYTES / 2**30:.0f} GiB). Fix: keep "
                f"the federated PCA on for wide modalities (model.reduce-dim > 0, model.reduce-above below {width}), "
                "or split the slide's patches into fewer, mean-pooled regions before export")
        x = np.zeros((len(bags), length, width), dtype=np.float32)
        mask = np.zeros((len(bags), length), dtype=bool)
        for i, bag in enumerate(bags):
            if bag is None:
                continue
            rows = (np.sort(rng.choice(len(bag), max_instances, replace=False))
                    if max_instances and len(bag) > max_instances else slice(None))
            bag = bag_rows(bag, rows)  # only the kept rows are read from disk
            z = (bag - mean) / std
            x[i, : len(bag)] = z if basis is None else z @ basis
            mask[i, : len(bag)] = True
            present[i, k] = True
        feats, _ = pooled_features(site, m) if m in site.bags else (np.zeros((len(bags), len(mean))), None)
        target = np.where(present[:, k : k + 1], stats.transform(m, feats), 0.0)
        xs.append(torch.from_numpy(x))
        masks.append(torch.from_numpy(mask))
        targets.append(torch.from_numpy(target.astype(np.float32)))
    return SiteTensors(
        modalities,
        tuple(xs),
        tuple(masks),
        tuple(targets),
        torch.from_numpy(present),
        torch.as_tensor(site.time, dtype=torch.float32),
        torch.as_tensor(site.event, dtype=torch.float32),
        tuple(site.context),
    )
