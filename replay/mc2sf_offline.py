"""MC²-SF under the offline ``mc2sf`` protocol (§5.1.1): the slow component trains in
the slow phase, the fast component on the device, tested on each user's last 5 clicks.

Methods (the ablation of Fig. 4 and the fast baseline of Table 2):

- ``mc2sf-f2s``: the slow component with the device's negative memory (Eq. 5–6),
  scored as a cloud model — its click history stops at the end of the slow phase; the
  negative memory r̂₂ is the device's, over every exposure before the target (the
  device keeps uploading it, Algorithm 1).
- ``mc2sf``: the fast component with S2F hints (Eq. 7–8) from that slow component,
  scored as a device model (every click before the target). The hints of the fast and
  test phases come from the cloud's view at the end of the slow phase.
- ``mc2sf-fast``: the fast component alone (Eq. 3–4), scored as a device model.

Stages: (1) slow — train on slow-phase targets, early-stop on the fast phase (cloud
view); (2) fast — the fast component starts from the cloud's item embeddings and GRU_n
(§4: E_I lives in the cloud), trains on slow-phase targets with the hint the cloud
would have sent a few clicks earlier (``offset mod 10`` clicks stale, spanning the 0–9
clicks of staleness the fast and test phases have), early-stops on the fast phase, and
then learns the fast phase itself for ``fast_phase_epochs`` (the paper's "fast
component is trained in the fast phase"). The test phase is never used for a decision.

Exposure windows are the user's exposures strictly earlier in time than the target:
the target's own slate is the recommendation being evaluated, so its other items are
not an input (on the synthetic world they would reveal the target's cluster).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from dcrec.models.mc2sf import (
    FastComponent,
    SlowComponent,
    as_loss,
    compute_hints,
    fast_score,
    slow_score,
)
from dcrec.models.training import Inputs, InputTrainer, TrainingConfig, score_inputs
from dcrec.replay.negatives import NegativeSampler
from dcrec.replay.offline import Samples, UserSequences, evaluate, mc2sf_split, train_early_stopped
from dcrec.streams.schema import EXPOSURE

MC2SF_METHODS = ("mc2sf", "mc2sf-f2s", "mc2sf-fast")
HINT_CYCLE = 10  # clicks between the slow phase's end and the last test item
_SLOW_STAGES: dict[tuple, tuple[dict, dict]] = {}  # recent slow stages, by run settings


@dataclass(frozen=True)
class MC2SFSettings:
    """Model and training settings (MC²-SF §5.1.4 defaults)."""

    embedding_dim: int = 32
    max_len: int = 50        # l^S, the cloud's click sequence
    device_len: int = 20     # l^F < l^S (§3): the device's click and exposure windows
    exposure_len: int = 20
    lr: float = 5e-4
    l2: float = 1e-4
    batch_size: int = 256
    train_negatives: int = 4
    fast_phase_epochs: int = 1

    def training(self) -> TrainingConfig:
        return TrainingConfig(lr=self.lr, l2=self.l2, batch_size=self.batch_size, epochs=1,
                              n_negatives=self.train_negatives)


class PhaseInputs:
    """Builds each model's inputs for a set of samples from the click and exposure
    sequences."""

    def __init__(self, clicks: UserSequences, exposures: UserSequences, log_ts: np.ndarray,
                 settings: MC2SFSettings) -> None:
        self.clicks = clicks
        self.log_ts = log_ts
        self.exposures = exposures
        self.settings = settings
        offsets = np.arange(len(clicks.items)) - clicks.start[clicks.users]
        self.slow_end = clicks.start[clicks.users] + clicks.lengths[clicks.users] - HINT_CYCLE
        self.offsets = offsets

    def _exposure_windows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The exposures of the slates a device saw before the click at sequence
        ``positions``: strictly earlier in time, so never the click's own slate."""
        first_at_time = np.searchsorted(self.log_ts, self.clicks.ts[positions], side="left")
        return self.exposures.windows_before(self.clicks.users[positions], first_at_time,
                                             self.settings.exposure_len)

    def slow(self, samples: Samples) -> Inputs:
        """Slow-component inputs: the sample's (cloud-view) history and r̂₂'s window."""
        exposures, lengths = self._exposure_windows(samples.key)
        return {"history": samples.history, "exposures": exposures,
                "exposure_lengths": lengths}

    def hint_context(self, samples: Samples, train: bool) -> Inputs:
        """What the cloud knew when it sent the hint a sample is served with: clicks before
        ``key - offset mod 10`` for training samples, the slow phase otherwise."""
        key = samples.key
        end = key - self.offsets[key] % HINT_CYCLE if train else self.slow_end[key]
        history, lengths = self.clicks.windows(end, samples.users, self.settings.max_len)
        exposures, exposure_lengths = self._exposure_windows(end)
        return {"history": history, "lengths": lengths, "exposures": exposures,
                "exposure_lengths": exposure_lengths}

    def fast(self, samples: Samples, hints: np.ndarray | None) -> Inputs:
        """Fast-component inputs: device click window, exposure window, hint."""
        exposures, lengths = self._exposure_windows(samples.key)
        inputs = {"history": samples.history, "lengths": samples.lengths,
                  "exposures": exposures, "exposure_lengths": lengths}
        if hints is not None:
            inputs["hint"] = hints
        return inputs


def _fit(trainer: InputTrainer, train: tuple[Inputs, np.ndarray], valid: Samples,
         valid_inputs: Inputs, score: Callable, sampler: NegativeSampler, max_epochs: int,
         patience: int, on_epoch: Callable[[int, float, float], None]) -> dict:
    def scorer(samples: Samples, candidates: np.ndarray) -> np.ndarray:
        return score_inputs(trainer.model, score, valid_inputs, candidates)

    stage = train_early_stopped(trainer.model, lambda: trainer.fit(*train, epochs=1),
                                lambda: evaluate(scorer, valid, sampler)["NDCG@10"],
                                max_epochs, patience, on_epoch)
    return {**stage, "valid": evaluate(scorer, valid, sampler)}


def _rank_all(score: Callable, model: torch.nn.Module, inputs: Inputs, seen: np.ndarray,
              n_items: int, k: int = 5) -> list[int]:
    """Top-``k`` items (log ids) for one sample over the whole catalogue, items the user
    clicked before left out."""
    candidates = np.arange(1, n_items + 1)[None, :]
    scores = score_inputs(model, score, inputs, candidates)[0]
    scores[seen - 1] = -np.inf
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]


def run_mc2sf(method: str, log_, settings: MC2SFSettings, seed: int, sampler: NegativeSampler,
              max_epochs: int, patience: int,
              on_epoch: Callable[[int, float, float], None]) -> dict:
    """Train and test one MC²-SF variant with one seed (``log_`` has exposures)."""
    if method not in MC2SF_METHODS:
        raise ValueError(f"unknown MC²-SF method {method!r}; known: {', '.join(MC2SF_METHODS)}")
    torch.manual_seed(seed)
    clicks = UserSequences.from_log(log_)
    exposures = UserSequences.from_log(log_, EXPOSURE)
    phases = PhaseInputs(clicks, exposures, log_.ts, settings)
    cloud = mc2sf_split(clicks, settings.max_len, device_model=False)
    device = mc2sf_split(clicks, settings.device_len, device_model=True)
    n_items = log_.n_items
    result: dict = {}

    slow = None
    if method in ("mc2sf", "mc2sf-f2s"):
        slow = SlowComponent(n_items, settings.embedding_dim, f2s=True)
        key = (log_.name, log_.n_events, n_items, seed, settings, max_epochs, patience)
        if key not in _SLOW_STAGES:  # mc2sf and mc2sf-f2s share the slow stage of a seed
            trainer = InputTrainer(slow, as_loss(slow_score(slow)), n_items,
                                   settings.training(), seed)
            stage = _fit(trainer, (phases.slow(cloud.train), cloud.train.target), cloud.valid,
                         phases.slow(cloud.valid), slow_score(slow), sampler, max_epochs,
                         patience, on_epoch)
            if len(_SLOW_STAGES) >= 8:
                _SLOW_STAGES.pop(next(iter(_SLOW_STAGES)))
            _SLOW_STAGES[key] = (copy.deepcopy(slow.state_dict()), stage)
        state, stage = _SLOW_STAGES[key]
        slow.load_state_dict(state)
        result["slow"] = stage
        if method == "mc2sf-f2s":
            test_inputs = phases.slow(cloud.test)
            result.update(best_epoch=stage["best_epoch"], epochs=stage["epochs"],
                          valid=stage["valid"])
            result["test"] = evaluate(
                lambda s, c: score_inputs(slow, slow_score(slow), test_inputs, c),
                cloud.test, sampler, cloud.activity)
            result["case_study"] = _case(slow, slow_score(slow), test_inputs, cloud.test,
                                         clicks, n_items)
            return result

    s2f = method == "mc2sf"
    fast = FastComponent(n_items, settings.embedding_dim, s2f=s2f)
    hints: dict[str, np.ndarray | None] = {"train": None, "valid": None, "test": None}
    if s2f:
        assert slow is not None
        frozen = copy.deepcopy(slow).eval()
        fast.warm_start_from(frozen)
        for name, samples in (("train", device.train), ("valid", device.valid),
                              ("test", device.test)):
            context = phases.hint_context(samples, name == "train")
            hints[name] = compute_hints(frozen, context["history"], context["lengths"],
                                        exposures=context["exposures"],
                                        exposure_lengths=context["exposure_lengths"])
    trainer = InputTrainer(fast, as_loss(fast_score(fast)), n_items, settings.training(), seed)
    valid_inputs = phases.fast(device.valid, hints["valid"])
    stage = _fit(trainer, (phases.fast(device.train, hints["train"]), device.train.target),
                 device.valid, valid_inputs, fast_score(fast), sampler, max_epochs, patience,
                 on_epoch)
    if settings.fast_phase_epochs:
        trainer.fit(valid_inputs, device.valid.target, epochs=settings.fast_phase_epochs)
    test_inputs = phases.fast(device.test, hints["test"])
    result.update(best_epoch=stage["best_epoch"], epochs=stage["epochs"], valid=stage["valid"],
                  fast_phase_epochs=settings.fast_phase_epochs)
    result["test"] = evaluate(lambda s, c: score_inputs(fast, fast_score(fast), test_inputs, c),
                              device.test, sampler, device.activity)
    result["case_study"] = _case(fast, fast_score(fast), test_inputs, device.test, clicks,
                                 n_items)
    return result


def case_row(samples: Samples) -> int:
    """The case-study sample: the first test item of the first user in the split."""
    return 0


def _case(model: torch.nn.Module, score: Callable, inputs: Inputs, samples: Samples,
          clicks: UserSequences, n_items: int) -> dict:
    k = case_row(samples)
    one = {name: array[k:k + 1] for name, array in inputs.items()}
    return case_record(clicks, samples, k,
                       _rank_all(score, model, one, _seen(clicks, samples, k), n_items))


def _seen(clicks: UserSequences, samples: Samples, k: int) -> np.ndarray:
    user = samples.users[k]
    return clicks.items[clicks.start[user]:samples.key[k]]


def case_record(clicks: UserSequences, samples: Samples, k: int, top: list[int]) -> dict:
    """The user, their 5 most recent clicks before the case item, and a method's top-5
    (log item ids)."""
    seen = _seen(clicks, samples, k)
    return {"user": int(samples.users[k]), "recent": [int(i) - 1 for i in seen[-5:]],
            "top5": top}


def rank_catalogue(score_fn: Callable[[np.ndarray], np.ndarray], clicks: UserSequences,
                   samples: Samples, n_items: int) -> dict:
    """Case-study record for a model scored by ``score_fn(candidates) → scores`` on the
    case sample (used for the DIN baseline)."""
    k = case_row(samples)
    scores = score_fn(np.arange(1, n_items + 1)[None, :])[0]
    scores[_seen(clicks, samples, k) - 1] = -np.inf
    return case_record(clicks, samples, k,
                       [int(i) for i in np.argsort(-scores, kind="stable")[:5]])


CASE_COLUMNS = {"mc2sf-fast": "Fast", "din": "Slow", "mc2sf": "S2F", "mc2sf-f2s": "F2S"}


def case_study_markdown(results: list[dict], titles: list[str]) -> str:
    """Fig. 3: the case user's 5 most recent clicks beside the top-5 of Fast, Slow, S2F
    and F2S (the first seed's runs), as a Markdown table with titles."""
    cases = {}
    for r in results:
        if r.get("case_study") and r["method"] in CASE_COLUMNS and r["method"] not in cases:
            cases[r["method"]] = r["case_study"]
    if not cases:
        return ""
    first = next(iter(cases.values()))
    columns = [m for m in CASE_COLUMNS if m in cases]
    lines = [f"### Case study (Fig. 3): user {first['user']}, first test item", "",
             "| rank | recent clicks | " + " | ".join(CASE_COLUMNS[m] for m in columns) + " |",
             "| --- |" + " --- |" * (len(columns) + 1)]
    recent = list(reversed(first["recent"]))  # most recent first
    for rank in range(5):
        cells = [titles[recent[rank]] if rank < len(recent) else ""]
        cells += [titles[cases[m]["top5"][rank]] for m in columns]
        lines.append(f"| {rank + 1} | " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


ABLATION = (("din", "DIN (slow)"), ("mc2sf-f2s", "w/ F2S"), ("mc2sf", "w/ S2F (MC²-SF)"))


def ablation_markdown(summary: dict) -> str:
    """Fig. 4: DIN → w/ F2S → w/ S2F on NDCG@5/10 and HR@10 (mean ± std), with each
    step's NDCG@10 gain and whether it exceeds two standard deviations of both sides."""
    rows = [(m, label) for m, label in ABLATION if m in summary]
    if len(rows) < 2:
        return ""
    lines = ["### Ablation (Fig. 4)", "",
             "| variant | NDCG@5 | NDCG@10 | HR@10 | Δ NDCG@10 vs previous | gap > 2σ |",
             "| --- | --- | --- | --- | --- | --- |"]
    previous = None
    for method, label in rows:
        m = summary[method]
        cells = [f"{m[n]['mean']:.4f} ± {m[n]['std']:.4f}" for n in ("NDCG@5", "NDCG@10",
                                                                    "HR@10")]
        gain, clear = "", ""
        if previous is not None:
            p = summary[previous]["NDCG@10"]
            delta = m["NDCG@10"]["mean"] - p["mean"]
            gain = f"{delta:+.4f}"
            clear = "yes" if delta > 2 * max(p["std"], m["NDCG@10"]["std"]) else "no"
        lines.append(f"| {label} | " + " | ".join([*cells, gain, clear]) + " |")
        previous = method
    return "\n".join(lines) + "\n"
