"""``dcrec eval``: train each method on an offline split, test it, over several seeds,
and tabulate mean ± std."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from dcrec.models.metrics import GROUP_METRIC_NAMES, METRIC_NAMES
from dcrec.models.training import IncrementalTrainer, WholeSequenceTrainer, score_candidates
from dcrec.replay.dccl_offline import DCCL_METHODS, run_dccl
from dcrec.replay.log import InteractionLog
from dcrec.replay.logging_policy import add_exposures
from dcrec.replay.mc2sf_offline import MC2SF_METHODS, MC2SFSettings, rank_catalogue, run_mc2sf
from dcrec.replay.negatives import NegativeSampler
from dcrec.replay.offline import (
    Samples,
    Split,
    UserSequences,
    evaluate,
    loo_split,
    mc2sf_split,
    train_early_stopped,
)
from dcrec.replay.provenance import source_digest
from dcrec.replay.report import write_json
from dcrec.streams.presets import PresetContext, sequence_model_factory, training_config
from dcrec.streams.river_mf import biased_mf
from dcrec.streams.schema import CLICK

log = logging.getLogger(__name__)

PROTOCOLS = ("loo", "mc2sf")
NEGATIVES = ("unclicked", "any")  # evaluation candidates: see run_method
SEQUENCE_METHODS = ("gru4rec", "sasrec", "din")
WHOLE_SEQUENCE_METHODS = ("scn", "cocorrrec")  # state from the first click (CoCorrRec)
DEVICE_METHODS = ("gru4rec", "river-mf", "mc2sf", "mc2sf-fast")  # every click before the target
METHODS = (*SEQUENCE_METHODS, *WHOLE_SEQUENCE_METHODS, "river-mf", "popularity", *MC2SF_METHODS,
           *DCCL_METHODS)
SLATE_SIZE = 5  # logging-policy slate for logs without exposures (as ``dcrec replay``)


def make_split(protocol: str, seqs: UserSequences, method: str, max_len: int) -> Split:
    if protocol == "loo":
        return loo_split(seqs, max_len)
    if protocol == "mc2sf":
        return mc2sf_split(seqs, max_len, device_model=method in DEVICE_METHODS)
    raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def _train_sequence_model(method: str, split: Split, ctx: PresetContext,
                          sampler: NegativeSampler, max_epochs: int, patience: int,
                          on_epoch: Callable[[int, float, float], None],
                          seqs: UserSequences | None = None) -> dict:
    torch.manual_seed(ctx.seed)
    model = sequence_model_factory(method, ctx)()
    trainer = IncrementalTrainer(model, training_config(method, ctx), ctx.seed)

    def scorer(samples: Samples, candidates: np.ndarray) -> np.ndarray:
        return score_candidates(model, samples.history, samples.lengths, candidates)

    stage = train_early_stopped(
        model, lambda: trainer.fit(split.train.history, split.train.lengths,
                                   split.train.target, epochs=1),
        lambda: evaluate(scorer, split.valid, sampler)["NDCG@10"], max_epochs, patience,
        on_epoch)
    result = {**stage,
              "valid": evaluate(scorer, split.valid, sampler),
              "test": evaluate(scorer, split.test, sampler, split.activity)}
    if seqs is not None:  # the MC²-SF case study (Fig. 3)
        test = split.test
        result["case_study"] = rank_catalogue(
            lambda c: score_candidates(model, test.history[:1], test.lengths[:1], c),
            seqs, test, ctx.n_items)
    return result


def _train_whole_sequence_model(method: str, seqs: UserSequences, split: Split,
                                ctx: PresetContext, sampler: NegativeSampler, max_epochs: int,
                                patience: int, on_epoch: Callable[[int, float, float], None],
                                ) -> dict:
    """CoCorrRec's SCN (with or without the GCN) on leave-last-out: trained on each
    user's whole training sequence, every next click a target (Eq. 16); validated and
    tested from the state after the user's whole history (Eq. 17)."""
    torch.manual_seed(ctx.seed)
    model = sequence_model_factory(method, ctx)()
    trainer = WholeSequenceTrainer(model, training_config(method, ctx), ctx.seed)
    lengths = seqs.lengths
    train_end = seqs.start[1:] - np.where(lengths >= 3, 2, 0)
    sequences = [seqs.items[a:b] for a, b in zip(seqs.start[:-1], train_end, strict=True)]

    def scorer(samples: Samples, candidates: np.ndarray) -> np.ndarray:
        return score_candidates(model, samples.history, samples.lengths, candidates, chunk=64)

    stage = train_early_stopped(
        model, lambda: trainer.fit(sequences, epochs=1),
        lambda: evaluate(scorer, split.valid, sampler)["NDCG@10"], max_epochs, patience,
        on_epoch)
    return {**stage,
            "valid": evaluate(scorer, split.valid, sampler),
            "test": evaluate(scorer, split.test, sampler, split.activity)}


def _time_ordered(samples: Samples, seqs: UserSequences) -> np.ndarray:
    return np.argsort(seqs.ts[samples.key], kind="stable")


def _train_river_mf(split: Split, seqs: UserSequences, n_items: int, seed: int,
                    sampler: NegativeSampler) -> dict:
    """One online pass of river's BiasedMF over the training clicks in time order."""
    model = biased_mf(seed)
    rng = np.random.default_rng(seed)
    train = split.train
    for k in _time_ordered(train, seqs):
        user = int(train.users[k])
        model.learn_one(user, int(train.target[k]) - 1, 1.0)
        model.learn_one(user, int(rng.integers(n_items)), 0.0)

    def scorer(samples: Samples, candidates: np.ndarray) -> np.ndarray:
        return np.array([[model.predict_one(int(u), int(c) - 1) for c in row]
                         for u, row in zip(samples.users, candidates, strict=True)],
                        dtype=np.float32)

    return {"valid": evaluate(scorer, split.valid, sampler),
            "test": evaluate(scorer, split.test, sampler, split.activity)}


def _train_popularity(split: Split, n_items: int, sampler: NegativeSampler) -> dict:
    counts = np.bincount(split.train.target, minlength=n_items + 1).astype(np.float32)

    def scorer(samples: Samples, candidates: np.ndarray) -> np.ndarray:
        return counts[candidates]

    return {"valid": evaluate(scorer, split.valid, sampler),
            "test": evaluate(scorer, split.test, sampler, split.activity)}


def run_method(log_: InteractionLog, protocol: str, method: str, seed: int, ctx: PresetContext,
               max_epochs: int = 50, patience: int = 5, n_negatives: int = 100,
               on_epoch: Callable[[int, float, float], None] | None = None,
               negatives: str = "unclicked") -> dict:
    """Train and test one method with one seed; the result with timings.

    ``negatives`` picks the evaluation candidates (:data:`NEGATIVES`): ``unclicked``
    items the user never clicked (RecBole's ``uni100`` with ``repeatable: False``), or
    ``any`` item but the target (RecBole's sequential quick-start config sets
    ``repeatable: True``, whose sampler excludes only the target)."""
    if negatives not in NEGATIVES:
        raise ValueError(f"unknown negatives {negatives!r}; known: {', '.join(NEGATIVES)}")
    seqs = UserSequences.from_log(log_)
    # the whole-sequence models read a user's entire history, not a window of it
    max_len = int(seqs.lengths.max(initial=1)) if method in WHOLE_SEQUENCE_METHODS \
        else ctx.max_len
    split = make_split(protocol, seqs, method, max_len)
    clicks = log_.event == CLICK
    sampler = NegativeSampler.for_log(log_.user[clicks], log_.item[clicks], log_.n_items,
                                      n_negatives, seed) if negatives == "unclicked" \
        else NegativeSampler(log_.n_items, n_negatives, seed)
    started = time.perf_counter()
    if method in MC2SF_METHODS:
        if protocol != "mc2sf":
            raise ValueError(f"{method} is evaluated under --protocol mc2sf")
        # the same logged exposures for every seed and method (seed 0 of the policy)
        result = run_mc2sf(method, add_exposures(log_, SLATE_SIZE, seed=0),
                           mc2sf_settings(ctx), seed, sampler, max_epochs, patience,
                           on_epoch or (lambda *_: None))
    elif method in DCCL_METHODS:
        if protocol != "loo":
            raise ValueError(f"{method} is evaluated under --protocol loo")
        result = run_dccl(method, log_, split, seqs.ts[split.train.key], seed, sampler,
                          ctx.embedding_dim or 32, training_config("din", ctx), max_epochs,
                          patience, on_epoch or (lambda *_: None))
    elif method in SEQUENCE_METHODS:
        result = _train_sequence_model(method, split, ctx, sampler, max_epochs, patience,
                                       on_epoch or (lambda *_: None),
                                       seqs if protocol == "mc2sf" else None)
    elif method in WHOLE_SEQUENCE_METHODS:
        if protocol != "loo":
            raise ValueError(f"{method} is evaluated under --protocol loo")
        result = _train_whole_sequence_model(method, seqs, split, ctx, sampler, max_epochs,
                                             patience, on_epoch or (lambda *_: None))
    elif method == "river-mf":
        result = _train_river_mf(split, seqs, log_.n_items, seed, sampler)
    elif method == "popularity":
        result = _train_popularity(split, log_.n_items, sampler)
    else:
        raise ValueError(f"unknown method {method!r} for eval; known: {', '.join(METHODS)}")
    result.update(method=method, seed=seed, protocol=protocol,
                  train_seconds=time.perf_counter() - started,
                  samples={"train": len(split.train), "valid": len(split.valid),
                           "test": len(split.test)})
    return result


def mc2sf_settings(ctx: PresetContext) -> MC2SFSettings:
    """MC²-SF §5.1.4 defaults, overridden by the context's flags."""
    base = MC2SFSettings()
    return MC2SFSettings(embedding_dim=ctx.embedding_dim or base.embedding_dim,
                         max_len=ctx.max_len, lr=ctx.lr or base.lr,
                         l2=ctx.l2 if ctx.l2 is not None else base.l2,
                         batch_size=ctx.batch_size, train_negatives=ctx.train_negatives)


class Kept(NamedTuple):
    """A kept run's result and the source digest of the code that made it (None: kept
    before runs recorded it)."""

    result: dict
    code: str | None


def load_kept(path: Path, settings: dict) -> Kept | None:
    """The run kept at ``path`` if it was made with the same ``settings``."""
    if path.exists():
        kept = json.loads(path.read_text())
        if kept.get("settings") == settings:
            code = kept.get("code")
            if code == source_digest():
                log.info("re-using %s", path)
            else:
                log.warning("re-using %s, made by other code (%s) than this (%s); "
                            "--fresh re-runs it", path, code or "unrecorded",
                            source_digest())
            return Kept(kept["result"], code)
    return None


def keep(path: Path, settings: dict, result: dict) -> Kept:
    """Keep ``result`` at ``path`` with the ``settings`` and the code that made it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json({"settings": settings, "code": source_digest(), "result": result}, path)
    return Kept(result, source_digest())


def kept_run(path: Path, settings: dict, fresh: bool, compute: Callable[[], dict]) -> Kept:
    """The run kept at ``path`` if it was made with the same ``settings`` (and ``fresh``
    is false); otherwise compute it and keep it there."""
    if not fresh and (kept := load_kept(path, settings)) is not None:
        return kept
    return keep(path, settings, compute())


def summarise(results: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and (sample) std of each test metric per method. The activity groups'
    macro-AUC appear where every seed's run has them (runs kept from before they were
    measured do not)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [r["test"] for r in results if r["method"] == method]
        table[method] = {
            name: {"mean": float(np.mean([row[name] for row in rows])),
                   "std": float(np.std([row[name] for row in rows], ddof=1))
                   if len(rows) > 1 else 0.0}
            for name in (*METRIC_NAMES, *GROUP_METRIC_NAMES) if all(name in r for r in rows)
        }
    return table


def mean_groups(results: list[dict]) -> list[dict]:
    """Per method, the activity groups' macro-AUC averaged over its seeds (DCCL Fig. 4),
    shaped like replay reports for :mod:`~dcrec.replay.activity_groups`; empty unless
    every run measured the groups."""
    if not results or not all("groups" in r["test"] for r in results):
        return []
    reports = []
    for method in dict.fromkeys(r["method"] for r in results):
        runs = [r for r in results if r["method"] == method]
        n = min(len(r["test"]["groups"]) for r in runs)
        groups = [{**runs[0]["test"]["groups"][g],
                   "macro_auc": float(np.mean([r["test"]["groups"][g]["macro_auc"]
                                               for r in runs]))} for g in range(n)]
        reports.append({"method": method, "seed": ",".join(str(r["seed"]) for r in runs),
                        "groups": groups})
    return reports


def markdown_table(summary: dict, title: str) -> str:
    names = [n for n in METRIC_NAMES if n != "UAUC"]
    names += [n for n in GROUP_METRIC_NAMES if any(n in m for m in summary.values())]
    lines = [f"### {title}", "", "| method | " + " | ".join(names) + " |",
             "| --- |" + " --- |" * len(names)]
    for method, metrics in summary.items():
        cells = [f"{metrics[n]['mean']:.4f} ± {metrics[n]['std']:.4f}" if n in metrics
                 else "—" for n in names]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(summary: dict, title: str, path) -> None:
    """Bar chart of HR@10 and NDCG@10 (mean ± std) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary)
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(1.6 * len(methods) + 2, 3.6))
    for k, name in enumerate(("HR@10", "NDCG@10")):
        ax.bar(x + (k - 0.5) * 0.38, [summary[m][name]["mean"] for m in methods], 0.38,
               yerr=[summary[m][name]["std"] for m in methods], capsize=3, label=name)
    ax.set_xticks(x, methods)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
