"""Gradient inversion with trap units, run by a hostile coordinator through a site's real ClientApp.

Helper module for tests/test_hostile_inversion.py (no tests here). The attack, step by step:

1. :func:`craft_trap_weights` builds Tier 1 weights (names and shapes of the run's model, so the
   ``weights`` check passes) that turn the survival head into a patient-isolating imprint layer
   ("Robbing the Fed", Fowl et al. 2022; trap weights, Boenisch et al. 2023):

   * every modality encoder g_k (``encoders.k.0``, a per-instance ``Linear(D_k, embed) + ReLU``) computes
     [ReLU(x); ReLU(-x)] of each standardised instance x, and the attention scorer is zeroed, so the
     pool averages the instances uniformly. Since x = ReLU(x) - ReLU(-x), the pooled slot carries
     the bag mean m_k exactly (z+ - z-), with no offset (no large weights needed);
   * f_phi's outputs are zeroed, so an absent modality's estimate is 0 (the standardised mean) and its
     slot is 0; the missing flag still tells the attacker which modalities are present;
   * the head's first layer ``head.0`` (``Linear(K * slot, hidden) + ReLU``) is where the traps are:
     its input is the patient's WHOLE multimodal vector [m_1; prompt_1; flag_1; ...; m_K; ...]. Every
     hidden unit j reads the same random direction v (a projection of the bag means) with bias -c_j,
     thresholds c_0 < ... < c_{m-1} at equiprobable quantiles of v.m (known to the coordinator, who
     chose the standardisation). Unit j fires for the patients with v.m_i > c_j;
   * the head's output weights are one small constant omega (dropout off), so dL/d(pre-activation) of
     every firing unit is omega * dL/drisk_i, the same for all units j of patient i.

   The gradient of unit j's weight row is sum_{i: v.m_i > c_j} omega dL/drisk_i * h_i and of its bias
   sum omega dL/drisk_i, so the difference of consecutive units j and j + 1 holds only the patients
   whose projection falls between c_j and c_{j+1}: when that bin holds one patient,
   h_i = (dW_j - dW_{j+1}) / (db_j - db_{j+1}) exactly (x = g_w / g_b of a single-patient trap).

   Why the head and not an encoder: a trap on ``encoders.k.0`` recovers one *instance* of one
   modality per unit (a patient has up to 5 instances in 1-3 modalities: several units per patient and
   no way to group them); the head's first layer sees the whole patient, already pooled.

2. The coordinator's config: one full-batch local step (min-local-steps 0, local-epochs 1, batch-size
   >= n_train), Adam, weight-decay 0, every dropout off, bags never subsampled.
3. :func:`invert_adam_step`: Adam's first step is update = -lr g / (|g| + eps) (bias-corrected
   m / sqrt(v) = g / |g| at step 1), so g = -sign(d) eps r / (1 - r) with r = |d| / lr. omega keeps every
   trap gradient near or below eps, where the step is (nearly) linear in g and the float32 weights
   returned still resolve it, at lr 1e4 and at lr 0.01 alike.
4. :func:`recover_from_traps` turns the gradients into candidate patient vectors, and
   :func:`recovered_patients` counts the training patients some candidate matches within 10%.

What is compared ("the patient's value"): the raw bag means of the patient's files (their mean
feature vector per modality, 0 for an absent modality), concatenated over the modalities. The site
feeds standardised instances ((x - mean) / std with the run's FeatureStats, which the coordinator
sent and therefore knows); the attack recovers standardised bag means and inverts the
standardisation. The truth is read from the site folder as the site reads it (core/data/site_data.py
``load_site`` and the bag means core/data/tensors.py ``build_tensors`` standardises for its targets), not
from anything the attack computed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
from flwr.app import Context, Message, RecordDict

from rmmfed.client.client_app import make_client_app
from rmmfed.flower.refusal import POLICY_REFUSED
from rmmfed.flower.records import from_record, to_content
from rmmfed.core.messages import protocol as P
from rmmfed.core.config import RunConfig
from rmmfed.core.aggregates.feature_stats import FeatureStats, add_sums, pooled_features
from rmmfed.core.data.site_data import load_site
from rmmfed.flower.refusal import refused_key
from rmmfed.core.model.tier1 import build_model
from rmmfed.core.model.weights import get_weights

from conftest import DIMS, write_site

ADAM_EPS = 1e-8  # torch.optim.Adam / AdamW default eps (the site builds its optimisers with it)

# The coordinator's training config for the attack (one full-batch Adam step, nothing random).
ATTACK_TRAINING = {
    "rounds": 1, "tier2.rounds": 0, "local-epochs": 1, "min-local-steps": 0, "batch-size": 4096,
    "optimizer": "adam", "weight-decay": 0.0, "lr-schedule": "constant", "strategy": "fedavg",
    "model.dropout": 0.0, "model.input-dropout": 0.0, "model.modality-dropout": 0.0, "model.max-instances": 64,
    "model.embed-dim": 2 * max(DIMS.values()), "model.prompt-dim": 3, "model.attn-dim": 4, "model.mc-samples": 4,
    "model.anat-partitions": 2, "hist-bins": 128,
    "model.cox-core": False,  # the coordinator's choice: every weight, the linear path too, trained by the site
}
# The explicit permissive policy (a hospital that switched every bound off).
PERMISSIVE_POLICY = """\
[dp]
required = false
[training]
max-lr = 1e6
max-local-steps = 100000
max-width = 100000
max-weight = 1e30
"""


# ---- a site under attack ---------------------------------------------------------------------------
class AttackedSite:
    """One hospital (a write_site folder, its real ClientApp with policy mod, egress guard and ledger,
    its Flower context) and a coordinator that sends it hand-built requests."""

    def __init__(self, root: Path, *, n: int = 200, seed: int = 5, policy: str | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = write_site(root, n=n, seed=seed, absent_rate=0.3)
        self.ledger = root / "ledger.jsonl"
        node = {"data-dir": str(self.path), "ledger": str(self.ledger), "device": "cpu"}
        if policy is not None:
            (root / "policy.toml").write_text(policy)
            node["policy"] = str(root / "policy.toml")
        self.app = make_client_app()
        self.context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
        self.stats: FeatureStats | None = None
        self.sums: dict[str, np.ndarray] = {}

    def send(self, phase: P.Phase, request=None) -> Message:
        content = to_content(request.to_records()) if request is not None else RecordDict()
        return self.app(Message(content, dst_node_id=7, message_type=phase.message_type), self.context)

    def statistics(self, partitions: int) -> FeatureStats:
        """The statistics phase as an honest server runs it: the site's sums, the run's FeatureStats."""
        reply = self.send(P.STATISTICS, P.StatsRequest(dict(DIMS), 5))
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        self.sums = from_record(reply.content[P.SUMS])
        self.stats = FeatureStats.from_sums(add_sums([self.sums]), DIMS, partitions)
        return self.stats

    def setup(self, flat: dict) -> Message:
        """The setup request with any flat run config (a hand-built one may hold keys RunConfig refuses)."""
        assert self.stats is not None, "statistics() first"
        return self.send(P.SETUP, P.SetupRequest(dict(flat), dict(DIMS), self.stats.to_arrays()))

    def train_round(self, weights: dict[str, np.ndarray], server_round: int = 1) -> Message:
        return self.send(P.TIER1_ROUND, P.RoundRequest(weights, server_round))

    def presence(self) -> dict[str, float]:
        """Share of training patients having each modality, from the sums the coordinator received."""
        n = max(float(self.sums[f"{m}.all.n"][0]) for m in DIMS)
        return {m: float(self.sums[f"{m}.all.n"][0]) / n if n else 1.0 for m in DIMS}

    def last_ledger_line(self) -> dict:
        return json.loads(self.ledger.read_text().splitlines()[-1])


def refusal_key(reply: Message) -> str | None:
    """The policy key of a refusal (code 403), else None (answered, or failed otherwise)."""
    if not reply.has_error() or reply.error.code != POLICY_REFUSED:
        return None
    return refused_key(reply.error)


def describe(reply: Message) -> str:
    if not reply.has_error():
        return "answered"
    return f"error {reply.error.code}: {reply.error.reason}"


# ---- crafting ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trap:
    """What the coordinator knows about its own trap weights (everything it needs to invert)."""

    modalities: tuple[str, ...]
    dims: tuple[int, ...]
    embed_dim: int
    prompt_dim: int
    direction: tuple[np.ndarray, ...]  # v_k over the standardised bag mean of modality k
    thresholds: np.ndarray  # c_j, increasing, one per head unit
    mean: tuple[np.ndarray, ...]  # the run's standardisation (FeatureStats), to invert it
    std: tuple[np.ndarray, ...]
    prompt: tuple[np.ndarray, ...]  # the modality prompts sent: known coordinates of every head input

    @property
    def slot(self) -> int:
        return self.embed_dim + self.prompt_dim + 1

    def projection(self, standardised: list[np.ndarray]) -> np.ndarray:
        """v.m of each patient (m_k = 0 where the modality is absent), as the head's traps see it."""
        return sum(m @ v for m, v in zip(standardised, self.direction))


def craft_trap_weights(cfg: RunConfig, stats: FeatureStats, *, presence: dict[str, float] | None = None,
                       omega: float = 1e-7, seed: int = 0) -> tuple[dict[str, np.ndarray], Trap]:
    """Tier 1 weights for ``cfg`` (the run's model: every name and shape as the site builds it) whose
    head is one bank of ``model.hidden-dim`` trap units (module docstring), and the :class:`Trap`.

    ``presence``: the share of patients having each modality (from the statistics' counts), to place the
    thresholds at equiprobable quantiles of v.m; ``omega``: the head's output weight, which sets the
    size of every trap gradient (keep it near Adam's eps)."""
    dims = stats.model_dims(dict(DIMS))
    model_cfg = cfg.model
    d, dp, hidden = model_cfg.embed_dim, model_cfg.prompt_dim, model_cfg.hidden_dim
    if d < 2 * max(dims.values()):
        raise ValueError(f"model.embed-dim {d} < 2 x the widest modality: the encoders cannot carry [ReLU(x); ReLU(-x)]")
    w = get_weights(build_model(dims, model_cfg, cfg.seed))
    rng = np.random.default_rng(seed)
    mods = tuple(dims)
    presence = presence or {m: 1.0 for m in mods}
    slot = d + dp + 1
    direction, var = [], 0.0
    raw = [rng.normal(size=D) for D in dims.values()]
    total = np.sqrt(sum((r ** 2).sum() for r in raw))
    for k, (m, D) in enumerate(dims.items()):
        v = raw[k] / total
        direction.append(v)
        var += presence[m] * float((v ** 2).sum())  # standardised bag means: unit variance per dimension
        enc = np.zeros((d, D), dtype=np.float32)
        enc[:D] = np.eye(D)
        enc[D:2 * D] = -np.eye(D)
        w[f"encoders.{k}.0.weight"], w[f"encoders.{k}.0.bias"] = enc, np.zeros(d, dtype=np.float32)
        w[f"pools.{k}.w.weight"] = np.zeros_like(w[f"pools.{k}.w.weight"])  # uniform attention: the bag mean
        w[f"est_out.{k}.weight"] = np.zeros_like(w[f"est_out.{k}.weight"])  # x_hat = 0: an absent slot is 0
        w[f"est_out.{k}.bias"] = np.zeros_like(w[f"est_out.{k}.bias"])
    thresholds = np.sqrt(var) * np.array([NormalDist().inv_cdf((j + 0.5) / hidden) for j in range(hidden)])
    head = np.zeros((hidden, len(mods) * slot), dtype=np.float32)
    for k, (v, D) in enumerate(zip(direction, dims.values())):
        head[:, k * slot:k * slot + D] = v  # v . (ReLU(m) - ReLU(-m)) = v . m
        head[:, k * slot + D:k * slot + 2 * D] = -v
    w["head.0.weight"], w["head.0.bias"] = head, (-thresholds).astype(np.float32)
    w["head.3.weight"] = np.full_like(w["head.3.weight"], omega)
    w["head.3.bias"] = np.zeros_like(w["head.3.bias"])
    if "linear.weight" in w:
        w["linear.weight"] = np.zeros_like(w["linear.weight"])
    trap = Trap(mods, tuple(dims.values()), d, dp, tuple(direction), thresholds,
                tuple(np.asarray(stats.mean[m], dtype=np.float64) for m in mods),
                tuple(np.asarray(stats.std[m], dtype=np.float64) for m in mods),
                tuple(np.asarray(w["modality_prompt"][k], dtype=np.float64) for k in range(len(mods))))
    return w, trap


# ---- inverting ---------------------------------------------------------------------------------------
def invert_adam_step(sent: dict[str, np.ndarray], returned: dict[str, np.ndarray], lr: float,
                     eps: float = ADAM_EPS) -> dict[str, np.ndarray]:
    """The gradient of Adam's first step (weight decay 0): d = -lr g / (|g| + eps), so
    g = -sign(d) eps r / (1 - r) with r = |d| / lr (float64; inf where the step saturated, r >= 1)."""
    out = {}
    for k, before in sent.items():
        step = np.asarray(returned[k], dtype=np.float64) - np.asarray(before, dtype=np.float64)
        r = np.abs(step) / lr
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(r < 1.0, eps * r / (1.0 - r), np.inf)
        out[k] = -np.sign(step) * g
    return out


def recover_from_traps(grads: dict[str, np.ndarray], trap: Trap, *, tol: float = 0.01) -> np.ndarray:
    """Candidate patients [hidden, sum D_k]: each trap bin's head input (difference of consecutive units),
    un-standardised to raw bag means (0 for a modality whose missing flag reads absent).

    A bin of one patient gives that patient exactly; a bin of several a weighted mix. The attacker keeps
    only the candidates whose known coordinates come back as sent: every modality prompt within ``tol``
    (relative) and every missing flag within ``tol`` of 0 or 1 (a mix of patients with other missing
    patterns fails the flags; noise fails everything). The others, and rows that are not finite (an
    empty bin, a saturated step), are NaN: without this check an attacker holding hundreds of
    guesses would "recover" a patient within 10% by chance now and then (about 1 run in 700 for 300
    guesses drawn from the run's statistics), and could not tell which guess it was."""
    gw = np.asarray(grads["head.0.weight"], dtype=np.float64)
    gb = np.asarray(grads["head.0.bias"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # saturated steps: inf - inf, 0 / 0
        # unit j fires for v.m > c_j: unit j minus unit j + 1 is the bin (c_j, c_{j+1}]
        dw = gw - np.vstack([gw[1:], np.zeros((1, gw.shape[1]))])
        db = gb - np.append(gb[1:], 0.0)
        h = dw / db[:, None]
        parts, ok = [], np.isfinite(h).all(axis=1)
        for k, D in enumerate(trap.dims):
            base = k * trap.slot
            m_std = h[:, base:base + D] - h[:, base + D:base + 2 * D]
            prompt = h[:, base + trap.embed_dim:base + trap.embed_dim + trap.prompt_dim]
            flag = h[:, base + trap.embed_dim + trap.prompt_dim]
            ok &= np.linalg.norm(prompt - trap.prompt[k], axis=1) <= tol * np.linalg.norm(trap.prompt[k])
            ok &= np.minimum(np.abs(flag), np.abs(flag - 1.0)) <= tol
            raw = m_std * trap.std[k] + trap.mean[k]
            parts.append(np.where((flag > 0.5)[:, None], raw, 0.0))
    out = np.hstack(parts)
    out[~ok] = np.nan
    return out


# ---- the truth ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Patients:
    """The site's training patients as the site reads them: raw bag means [n, sum D_k] (0 where absent)."""

    ids: list[str]
    vectors: np.ndarray
    present: np.ndarray  # [n, K]
    time: np.ndarray

    def standardised(self, trap: Trap) -> list[np.ndarray]:
        out, start = [], 0
        for k, D in enumerate(trap.dims):
            block = (self.vectors[:, start:start + D] - trap.mean[k]) / trap.std[k]
            out.append(np.where(self.present[:, k:k + 1], block, 0.0))
            start += D
        return out


def training_patients(site_dir: Path) -> Patients:
    """Every training patient's raw bag means, read from the site folder with core/data/site_data.load_site
    (the validated bags) and the bag means core/data/tensors.build_tensors standardises (pooled_features)."""
    site = load_site(site_dir, expected=dict(DIMS))
    idx = site.indices("train")
    blocks, present = [], []
    for m in DIMS:
        feats, has = pooled_features(site, m)
        blocks.append(np.where(has[idx, None], feats[idx], 0.0))
        present.append(has[idx])
    return Patients([site.patient_ids[i] for i in idx], np.hstack(blocks), np.stack(present, axis=1),
                    site.time[idx])


def recovered_patients(recovered: np.ndarray, truth: np.ndarray | Patients, rel_tol: float = 0.1) -> int:
    """Training patients whose full input vector some candidate matches: ||x_hat - x|| / ||x|| <= rel_tol."""
    x = truth.vectors if isinstance(truth, Patients) else np.asarray(truth, dtype=np.float64)
    cand = np.asarray(recovered, dtype=np.float64).reshape(-1, x.shape[1])
    cand = cand[np.isfinite(cand).all(axis=1)]
    if not len(cand):
        return 0
    err = np.linalg.norm(cand[None, :, :] - x[:, None, :], axis=2).min(axis=1)
    return int((err <= rel_tol * np.linalg.norm(x, axis=1)).sum())


def isolated_patients(trap: Trap, truth: Patients) -> int:
    """Training patients alone in their trap bin (what a perfect inversion could recover): an oracle
    from the truth, for the test's denominator, never used by the attack."""
    s = trap.projection(truth.standardised(trap))
    bins = np.searchsorted(trap.thresholds, s, side="left")  # bin j = (c_{j-1}, c_j]; 0: below every trap
    counts = np.bincount(bins, minlength=len(trap.thresholds) + 1)
    return int(((bins > 0) & (counts[bins] == 1)).sum())


# ---- the whole attack --------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttackResult:
    reply: Message
    recovered: int
    isolated: int
    n_train: int
    candidates: np.ndarray


def run_attack(site: AttackedSite, overrides: dict, *, omega: float = 1e-7, seed: int = 0) -> AttackResult:
    """Statistics, setup with the attack's config, one training round with trap weights, inversion."""
    cfg = RunConfig().with_overrides({**ATTACK_TRAINING, **overrides})
    stats = site.statistics(cfg.model.anat_partitions)
    reply = site.setup(cfg.to_flat())
    assert not reply.has_error(), f"setup: {describe(reply)}"
    weights, trap = craft_trap_weights(cfg, stats, presence=site.presence(), omega=omega, seed=seed)
    reply = site.train_round(weights)
    truth = training_patients(site.path)
    isolated = isolated_patients(trap, truth)
    if reply.has_error():
        return AttackResult(reply, 0, isolated, len(truth.ids), np.zeros((0, truth.vectors.shape[1])))
    returned = from_record(reply.content[P.ARRAYS])
    grads = invert_adam_step(weights, returned, cfg.lr)
    candidates = recover_from_traps(grads, trap)
    return AttackResult(reply, recovered_patients(candidates, truth), isolated, len(truth.ids), candidates)
