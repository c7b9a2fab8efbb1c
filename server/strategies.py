"""Flower strategies for the Tier 1 rounds, restricted to the sites the handshake accepted."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from ..core.messages import metric_names as M
from ..core.messages import protocol as P
from ..core.survival.concordance import ConcordanceCounts, combined_c_index
from ..core.config import RunConfig
from ..core.tier2.tier2_gate import ValidationSums
from ..flower.refusal import refused_key
from .defences import ROBUST_STRATEGIES, central_dp, defended
from .queries import decode
from .repeated_warnings import RepeatedWarnings, sites
from .tail_average import TailAverage

STRATEGY_STATE = ("current_arrays", "m_t", "v_t")  # FedOpt family (FedAdam, FedYogi, FedAdagrad)


def _restricted(base: type) -> type:
    class Restricted(base):  # type: ignore[misc, valid-type]
        """Sends only to accepted nodes; records per-round metrics and timing for the report."""

        def __init__(self, *args, accepted: set[int], on_round: Callable[[int, dict], None],
                     train_type: str = P.TIER1_ROUND.message_type,
                     evaluate_type: str = P.TIER1_VALIDATION.message_type, round_offset: int = 0,
                     select_metric: str = "c-index", **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.train_type, self.evaluate_type = train_type, evaluate_type
            self.select_metric = select_metric  # Tier 1 rounds: "c-index" or "partial-likelihood"
            self.round_offset = round_offset  # rounds completed before a resume
            self.accepted = accepted
            self.on_round = on_round
            self.history: list[dict] = []
            self.validation_sums: dict[int, ValidationSums] = {}  # Tier 2 rounds: the gate's typed sums
            self.best_score, self.best_round, self.best_arrays = float("-inf"), 0, None
            self._candidate = None
            name = P.phase_of(train_type).name if P.phase_of(train_type) else train_type  # "tier1" / "tier2"
            self.repeated = RepeatedWarnings(f"{name} training")  # per-round warnings: once at once, then a count
            self.repeated_val = RepeatedWarnings(f"{name} validation")
            self.last_arrays = None
            self.tail: TailAverage | None = None  # the phase's last rounds' mean (server/tail_average.py)
            self._sent = None
            self.checkpoint_fn: Callable | None = None
            self._t0 = time.perf_counter()
            # Each round's validation travels in the next training round's replies (validate-sent); only the
            # last round (the run's round ``last_round``; None: unknown, every round) is validated on its own.
            self.last_round: int | None = None
            evaluate = P.phase_of(evaluate_type)
            self._sent_keys = frozenset(evaluate.metrics) - {M.NUM_EXAMPLES} if evaluate else frozenset()

        # ---- state, for checkpoints and resume ------------------------------------------------
        def resume(self, state: dict) -> None:
            """Continue after ``state["round"]`` rounds (a checkpoint written by :meth:`snapshot`)."""
            self.round_offset = int(state["round"])
            self.history = list(state["history"])
            self.best_score, self.best_round = state["best_score"], state["best_round"]
            self.validation_sums = sums_from_plain(state.get("validation_sums"))
            if state.get("best_weights") is not None:
                self.best_arrays = _array_record(state["best_weights"])
            if state.get("tail") is not None:
                self.tail = TailAverage.from_plain(state["tail"])
            for k, v in (state.get("strategy") or {}).items():  # FedOpt moments
                if k in STRATEGY_STATE:
                    setattr(self, k, v)

        def snapshot(self) -> dict:
            """What :meth:`resume` needs: the last round's weights, history, model selection, optimiser state."""
            return {"weights": _numpy(self.last_arrays), "history": self.history, "best_score": self.best_score,
                    "best_round": self.best_round, "validation_sums": sums_to_plain(self.validation_sums),
                    "best_weights": _numpy(self.best_arrays) if self.best_arrays is not None else None,
                    "tail": self.tail.to_plain() if self.tail is not None else None,
                    "strategy": {k: getattr(self, k) for k in STRATEGY_STATE if getattr(self, k, None) is not None}}

        def on_round_end(self, hook: Callable | None) -> None:
            """``hook(strategy, run_round)`` after every round (after its validation when there is one)."""
            self.checkpoint_fn = hook

        # ---- Flower's round loop ---------------------------------------------------------------
        def _typed(self, messages: Iterable[Message], message_type: str) -> list[Message]:
            """The strategy's messages for the accepted sites, as this phase's message type (core/messages/protocol.py)."""
            return [Message(m.content, dst_node_id=m.metadata.dst_node_id, message_type=message_type)
                    for m in messages if m.metadata.dst_node_id in self.accepted]

        @property
        def validates(self) -> bool:
            return self.fraction_evaluate > 0.0

        def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
            self._t0 = time.perf_counter()
            self._sent = arrays  # what this round started from (the previous round's aggregate): kept when no update arrives
            config["round-offset"] = self.round_offset
            # the previous round's validation rides in this round's replies (core/messages/round_request.py)
            config["validate-sent"] = self.validates and self.last_round is not None and server_round + self.round_offset > 1
            return self._typed(super().configure_train(server_round, arrays, config, grid), self.train_type)

        def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
            if self.last_round is not None and server_round + self.round_offset < self.last_round:
                return []  # validated inside the next training round
            self._candidate = arrays  # the weights this validation round scores
            config["round-offset"] = self.round_offset
            return self._typed(super().configure_evaluate(server_round, arrays, config, grid), self.evaluate_type)

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
            """Validation score from the sites' sums; keeps the best round's weights.

            Tier 1 rounds: the C-index from comparable-pair counts, or (select-metric =
            partial-likelihood) the site-stratified validation Cox partial log-likelihood per event,
            sum of the sites' log-likelihoods over the sum of their events; both are recorded. Tier 2 rounds
            (this strategy's validation is Tier 2's): minus the masked recovery MSE from the round's typed
            sums (core/tier2/tier2_gate.ValidationSums), kept in ``validation_sums`` for the gate and shown in
            the history. The history records how many sites' validation counts
            entered the score ("val-sites"): a site missing from a validation round changes the score,
            hence possibly the selected round."""
            replies = list(replies)
            if not replies and not self.validates:  # a phase without validation: the round ends, nothing to score
                self.on_evaluated(server_round + self.round_offset)
                return None
            if not replies and self.last_round is not None and server_round + self.round_offset < self.last_round:
                return None  # this round's validation comes with the next training round
            good = [decode(r, P.MetricsReply).metrics for r in replies if not r.has_error()]
            refused = [k for r in replies if r.has_error() and (k := refused_key(r.error))]
            rnd = server_round + self.round_offset
            score = self._score(rnd, good, refused, len(replies) - len(good) - len(refused), self._candidate)
            self.on_evaluated(rnd)
            return MetricRecord(score) if score is not None else None

        def _score(self, rnd: int, good: list[dict], refused: list[str], failed: int, candidate,
                   silent: int = 0) -> dict | None:
            """Round ``rnd``'s validation from the sites' metrics ``good`` (``refused``: the refusals' policy
            keys; ``failed``: sites without an answer; ``silent``: training replies without validation);
            keeps the best round's weights (``candidate``)."""
            extra: dict = {}
            tier2 = self.evaluate_type == P.TIER2_VALIDATION.message_type
            if tier2 and good:
                sums = self.validation_sums[rnd] = ValidationSums.of_sites(good)
                score = -sums.mse_tier2
                figures = ((sums.mse_tier1, sums.mse_tier2, sums.pairs_tier1.c_index(), sums.pairs_tier2.c_index())
                           if sums.n > 0 else (float("nan"),) * 4)
                extra = {**dict(zip(("val-recovery-mse-tier1", "val-recovery-mse", "val-c-index-tier1", "val-c-index"),
                                    figures)), "val-sums": sums.to_metrics()}
            elif tier2:
                score = float("nan")
            else:
                counts = [ConcordanceCounts(*(float(m[k]) for k in M.PAIRS.counts)) for m in good]
                c = combined_c_index(counts) if counts else float("nan")
                events = sum(float(m.get(M.VAL_EVENTS, 0.0)) for m in good)
                pll = sum(float(m.get(M.VAL_PLL, 0.0)) for m in good) / events if events > 0 else float("nan")
                extra = {"val-c-index": c, "val-pll": pll}
                score = pll if self.select_metric == "partial-likelihood" else c
            self.repeated_val.round(rnd)  # each kind is said once now and counted in the phase's summary
            if refused:
                self.repeated_val.warn(rnd, sites(len(refused), "refused by {its} site policy"),
                                       ", ".join(sorted(set(refused))), f"the score uses the other {len(good)} site(s)")
            if failed:
                self.repeated_val.warn(rnd, sites(failed, "failed to answer"),
                                       then=f"the score uses the other {len(good)} site(s)")
            if silent:
                self.repeated_val.warn(rnd, sites(silent, "sent no validation with {its} training update"),
                                       "below the site's floor, or that round's validation already answered",
                                       f"the score uses the other {len(good)} site(s)")
            if score == score and score > self.best_score:
                self.best_score, self.best_round, self.best_arrays = score, rnd, candidate
            if self.history and self.history[-1]["round"] == rnd:
                self.history[-1].update({**extra, "val-sites": len(good), "val-failed": len(refused) + failed + silent})
            if score != score:
                return None
            if tier2:
                return {"val-recovery-mse": -score}
            return {k: v for k, v in extra.items() if v == v}

        def aggregate_train(self, server_round: int, replies: Iterable[Message]):
            # Replies arrive in completion order; sort them by content so that the float sums of the
            # aggregation, hence the metrics, are identical run to run for the same seed.
            replies = sorted(replies, key=_content_key)
            rnd = server_round + self.round_offset
            if self.validates and self.last_round is not None and rnd > 1:  # the previous round's validation
                sent = [{k: v for k, v in decode(r, P.MetricsReply).metrics.items() if k in self._sent_keys}
                        for r in replies if not r.has_error()]
                good = [m for m in sent if m]
                self._score(rnd - 1, good, [], len(replies) - len(sent), self._sent, silent=len(sent) - len(good))
            for r in replies:  # read above; a site below its floor sends none, and Flower averages only equal keys
                rec = None if r.has_error() else r.content.metric_records.get(P.METRICS)
                for k in [k for k in (rec or {}) if k in self._sent_keys]:
                    del rec[k]
            arrays, metrics = super().aggregate_train(server_round, replies)
            ok = sum(1 for r in replies if not r.has_error())
            self.repeated.round(server_round + self.round_offset)
            if arrays is None:  # no usable update before the round timeout: Flower keeps the weights it sent
                self.repeated.warn(server_round + self.round_offset, "no site's update arrived in time",
                                   "Fix: raise round-timeout-s if the sites are slow",
                                   f"the weights stay those sent this round ({len(replies) - ok} of {len(replies)} "
                                   "replies failed)")
            self.last_arrays = arrays if arrays is not None else self._sent
            if self.tail is not None and self.last_arrays is not None:
                self.tail.add(rnd, _numpy(self.last_arrays))
            info = {"round": server_round + self.round_offset, "sites": ok, "failed": len(replies) - ok,
                    "seconds": time.perf_counter() - self._t0, **(dict(metrics) if metrics else {})}
            self.history.append(info)
            self.on_round(server_round + self.round_offset, info)
            if not self.validates or (self.last_round is not None and rnd < self.last_round):
                self.on_evaluated(rnd)  # the round ends here: its validation comes with the next one
            return arrays, metrics

        def say_repeated(self) -> None:
            """End of the phase: each per-round warning once more, with the rounds it occurred in."""
            self.repeated.summary()
            self.repeated_val.summary()

        def on_evaluated(self, rnd: int) -> None:
            """End of a round (after validation when there is one): the checkpoint hook."""
            if self.checkpoint_fn is not None:
                self.checkpoint_fn(self, rnd)

    Restricted.__name__ = f"Restricted{base.__name__}"
    return Restricted


def sums_to_plain(sums: dict[int, ValidationSums]) -> list:
    """Typed validation sums per round as a checkpoint holds them: [[round, sites, metrics], ...]."""
    return [[int(r), int(s.sites), s.to_metrics()] for r, s in sorted(sums.items())]


def sums_from_plain(plain: list | None) -> dict[int, ValidationSums]:
    return {int(r): ValidationSums.from_metrics(m, int(n)) for r, n, m in plain or []}


def _numpy(arrays: ArrayRecord) -> dict:
    return {k: v.numpy() for k, v in arrays.to_torch_state_dict().items()}


def _array_record(weights: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})


def _content_key(reply: Message) -> bytes:
    if reply.has_error() or not reply.content.array_records:
        return b""
    record = next(iter(reply.content.array_records.values()))
    return hashlib.sha1(b"".join(a.data for a in record.values())).digest()


def make_strategy(cfg: RunConfig, n_sites: int, accepted: set[int], on_round: Callable[[int, dict], None],
                  *, train: P.Phase = P.TIER1_ROUND, evaluate: P.Phase = P.TIER1_VALIDATION,
                  select_best: bool | None = None, round_offset: int = 0) -> FedAvg:
    """The configured strategy for one training phase: ``train`` and ``evaluate`` name its rounds' phases."""
    need = min(cfg.min_sites, n_sites) if cfg.min_sites else n_sites // 2 + 1  # a dead site must not stall the run
    select = cfg.select_best if select_best is None else select_best
    common = dict(fraction_train=1.0, fraction_evaluate=1.0 if select else 0.0, min_train_nodes=need,
                  min_evaluate_nodes=need, min_available_nodes=need, accepted=accepted, on_round=on_round,
                  train_type=train.message_type, evaluate_type=evaluate.message_type, round_offset=round_offset,
                  select_metric=cfg.select_metric)
    common.update(max_update_norm=cfg.max_update_norm, norm_action=cfg.norm_action)  # DefendedAggregation
    if cfg.strategy == "fedprox":
        strategy = _restricted(defended(FedProx))(proximal_mu=cfg.proximal_mu, **common)
    elif cfg.strategy == "fedadam":
        strategy = _restricted(defended(FedAdam))(eta=cfg.server_lr, **common)
    else:
        extra = {"fedtrimmedavg": {"beta": cfg.trim_beta}, "krum": {"num_malicious_nodes": cfg.krum_malicious},
                 "multikrum": {"num_malicious_nodes": cfg.krum_malicious, "num_nodes_to_select": cfg.multikrum_select},
                 }.get(cfg.strategy, {})
        strategy = _restricted(defended(ROBUST_STRATEGIES[cfg.strategy]))(**common, **extra)
    if cfg.central_dp_noise > 0:  # the wrapper delegates to `strategy`, whose bookkeeping stays in `.strategy`
        return central_dp(strategy, noise_multiplier=cfg.central_dp_noise, clipping_norm=cfg.central_dp_clip,
                          num_sampled_clients=need)
    return strategy


def mean_metric(replies: list[MetricRecord], key: str) -> float:
    vals = [float(r[key]) for r in replies if key in r]
    return sum(vals) / len(vals) if vals else float("nan")
