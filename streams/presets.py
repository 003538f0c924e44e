"""Methods as presets: a name → the pipeline (device processor + cloud job) it runs.

The collaborative presets of DESIGN.md (mc2sf, dccl, cocorrrec, intellectreq, …) are
added here as their components land; unknown names fail with the list of known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from dcrec.models.base import SequentialRecommender
from dcrec.models.din import DIN
from dcrec.models.gru4rec import GRU4Rec
from dcrec.models.sasrec import SASRec
from dcrec.models.scn import SCN
from dcrec.models.training import TrainingConfig
from dcrec.state.registry import ModelRegistry
from dcrec.streams.admission import RequestAdmission
from dcrec.streams.cocorrrec_pipeline import (
    CorrectionService,
    TTTProcessor,
    WholeSequenceCloudJob,
)
from dcrec.streams.dccl_pipeline import build_dccl, profile_matrix
from dcrec.streams.intellectreq_pipeline import (
    SCORED,
    IntellectReqCloudJob,
    ParameterRequestProcessor,
    ParameterService,
    ThresholdController,
)
from dcrec.streams.local_runtime import Pipeline
from dcrec.streams.mc2sf_pipeline import build_mc2sf
from dcrec.streams.river_mf import PopularityProcessor, RiverMFProcessor
from dcrec.streams.sequence_pipeline import SequenceCloudJob, SequenceServingProcessor


@dataclass(frozen=True)
class PresetContext:
    """What a preset needs to know about the run (sizes and settings, not the data)."""

    n_users: int
    n_items: int
    seed: int
    max_len: int = 50
    embedding_dim: int | None = None
    lr: float | None = None
    l2: float | None = None
    batch_size: int = 256
    epochs_per_job: int = 2
    train_negatives: int = 4
    replay_ratio: int | None = None   # past samples rehearsed per new one; None: preset's
    replay_capacity: int = 50_000
    upload_interval: int = 3600
    ttt_mini_batch: int = 10  # CoCorrRec's TTT mini-batch size b (§5.4.2: 1 … 20)
    request_budget: float = 0.1  # the share of clicks that may request parameters
    request_capacity: float | None = None  # requests per stream second the cloud answers
    request_queue: int = 100      # requests the cloud may hold waiting
    measured_capacity: bool = False  # hold requests to the service's measured capacity too
    # each user's categorical attributes (age, gender, …), an array per attribute
    user_features: dict[str, np.ndarray] = field(default_factory=dict)


# model defaults: RecBole's for gru4rec / sasrec, MC²-SF §5.1.4 for din
_SEQUENCE_MODELS: dict[str, tuple[Callable[[PresetContext, int], SequentialRecommender],
                                  int, float, float]] = {
    "gru4rec": (lambda c, d: GRU4Rec(c.n_items, embedding_dim=d, hidden_dim=d), 64, 1e-3, 0.0),
    "sasrec": (lambda c, d: SASRec(c.n_items, max_len=c.max_len, hidden_dim=d), 64, 1e-3, 0.0),
    "din": (lambda c, d: DIN(c.n_items, embedding_dim=d), 32, 5e-4, 1e-4),
    # CoCorrRec §5.1.4: embedding 64, 4 heads, lr from {1e-3, …, 1e-2}; dropout 0.5 on
    # the hidden states, chosen on ML-100K validation (seed 0, best NDCG@10: 0.4800 at
    # 0.5 and lr 1e-3; 0.4757 at lr 2e-3; 0.4628 at 0.3; none: training overfits early)
    "scn": (lambda c, d: SCN(c.n_items, dim=d, mini_batch=c.ttt_mini_batch, dropout=0.5),
            64, 1e-3, 0.0),
    "cocorrrec": (lambda c, d: SCN(c.n_items, dim=d, mini_batch=c.ttt_mini_batch,
                                   correction=True, dropout=0.5), 64, 1e-3, 0.0),
}


def sequence_model_factory(name: str, ctx: PresetContext) -> Callable[[], SequentialRecommender]:
    """A function building a fresh ``name`` model with the context's sizes."""
    build, default_dim, _, _ = _SEQUENCE_MODELS[name]
    dim = ctx.embedding_dim or default_dim
    return lambda: build(ctx, dim)


def cloud_training(ctx: PresetContext, lr: float, l2: float,
                   replay_ratio: int = 0) -> TrainingConfig:
    """A cloud job's optimiser settings: the context's where it sets them, else the
    preset's defaults (``lr``, ``l2``, ``replay_ratio``)."""
    return TrainingConfig(lr=ctx.lr or lr, l2=ctx.l2 if ctx.l2 is not None else l2,
                          batch_size=ctx.batch_size, epochs=ctx.epochs_per_job,
                          n_negatives=ctx.train_negatives,
                          replay_ratio=replay_ratio if ctx.replay_ratio is None
                          else ctx.replay_ratio,
                          replay_capacity=ctx.replay_capacity)


def training_config(name: str, ctx: PresetContext) -> TrainingConfig:
    _, _, lr, l2 = _SEQUENCE_MODELS[name]
    return cloud_training(ctx, lr, l2)


def _sequence_pipeline(name: str, ctx: PresetContext) -> Pipeline:
    torch.manual_seed(ctx.seed)
    factory = sequence_model_factory(name, ctx)
    registry = ModelRegistry()
    cloud = SequenceCloudJob(name, factory, ctx.n_users, ctx.max_len,
                             training_config(name, ctx), ctx.seed, registry)
    processor = SequenceServingProcessor(factory, ctx.max_len)
    processor.on_release(cloud.initial_release(), registry)
    return Pipeline(processor=processor, cloud=cloud, registry=registry)


def mc2sf_pipeline(variant: str, ctx: PresetContext) -> Pipeline:
    """An MC²-SF preset; MC²-SF §5.1.4 defaults (embedding 32, Adam lr 5e-4, L2 1e-4)
    unless the context overrides them."""
    training = cloud_training(ctx, 5e-4, 1e-4)
    processor, cloud, registry = build_mc2sf(variant, ctx.n_users, ctx.n_items, ctx.seed,
                                             ctx.max_len, ctx.embedding_dim or 32, training,
                                             ctx.upload_interval)
    return Pipeline(processor=processor, cloud=cloud, registry=registry)


def dccl_pipeline(variant: str, ctx: PresetContext) -> Pipeline:
    """A DCCL preset on the DIN backbone (DCCL §4.1; MC²-SF's DIN defaults: embedding
    32, Adam lr 5e-4, L2 1e-4, unless the context overrides them)."""
    training = cloud_training(ctx, 5e-4, 1e-4)
    profiles = profile_matrix(ctx.user_features, ctx.n_users)
    processor, cloud, registry = build_dccl(variant, ctx.n_users, ctx.n_items, ctx.seed,
                                            ctx.max_len, ctx.embedding_dim or 32, training,
                                            ctx.upload_interval, profiles)
    return Pipeline(processor=processor, cloud=cloud, registry=registry)


def cocorrrec_pipeline(name: str, ctx: PresetContext) -> Pipeline:
    """``scn`` (the self-correction network alone) or ``cocorrrec`` (with the cloud's
    correction network); CoCorrRec §5.1.4 defaults (embedding 64, 4 heads, b = 10)."""
    if ctx.replay_ratio:
        raise ValueError(f"{name} trains on whole click sequences; the replay ratio applies "
                         "to presets trained on click windows")
    torch.manual_seed(ctx.seed)
    factory = sequence_model_factory(name, ctx)
    registry = ModelRegistry()
    cloud = WholeSequenceCloudJob(name, factory, ctx.n_users, training_config(name, ctx),
                                  ctx.seed, registry)
    corrected = name == "cocorrrec"
    service = CorrectionService(factory, registry, name) if corrected else None
    processor = TTTProcessor(factory, corrected, service.respond if service else None)
    processor.on_release(cloud.initial_release(), registry)
    return Pipeline(processor=processor, cloud=cloud, registry=registry, service=service)


# request policy of each EC-CDR preset (IntellectReq §4): bounds and the agents
_REQUEST_POLICIES = {"ec-cdr": "always", "ec-cdr-static": "never", "random": "random",
                     "intellectreq": "mrs", "intellectreq-drift": "mrs-drift", "drift": "drift",
                     "lof": "lof", "ocsvm": "ocsvm"}
EC_CDR_REPLAY = 4   # past clicks an EC-CDR cloud job rehearses per new click


def intellectreq_pipeline(name: str, ctx: PresetContext) -> Pipeline:
    """An EC-CDR preset; IntellectReq §4 defaults (embedding 32, Adam lr 1e-3)."""
    from dcrec.models.intellectreq import IntellectReqModel

    torch.manual_seed(ctx.seed)
    dim = ctx.embedding_dim or 32

    def factory() -> IntellectReqModel:
        torch.manual_seed(ctx.seed)
        return IntellectReqModel(ctx.n_items, dim, reads_drift=name == "intellectreq-drift")

    # Eq. 6 trains the generator on the global history: each cloud job rehearses
    # ``EC_CDR_REPLAY`` past clicks per new one (without, the generator learns too little
    # for its parameters to differ between devices — docs/intellectreq.md)
    training = cloud_training(ctx, 1e-3, 0.0, replay_ratio=EC_CDR_REPLAY)
    registry = ModelRegistry()
    admission = (RequestAdmission(ctx.request_capacity, ctx.request_queue)
                 if ctx.request_capacity is not None else None)
    service = ParameterService(factory, registry, name, ctx.max_len, admission)
    policy = _REQUEST_POLICIES[name]
    controller = (ThresholdController(ctx.request_budget, ctx.request_capacity)
                  if policy in SCORED else None)
    cloud = IntellectReqCloudJob(name, factory, ctx.n_users, ctx.max_len, training, ctx.seed,
                                 registry, service, controller,
                                 score=policy if policy in SCORED else "mrs",
                                 measure_capacity=ctx.measured_capacity)
    processor = ParameterRequestProcessor(factory, ctx.max_len, policy, ctx.request_budget,
                                          ctx.seed, service.respond)
    processor.on_release(cloud.initial_release(), registry)
    return Pipeline(processor=processor, cloud=cloud, registry=registry, service=service)


@dataclass(frozen=True)
class Preset:
    """A method: one line on what it is, and how to build its pipeline."""

    summary: str
    build: Callable[[PresetContext], Pipeline]


PRESETS: dict[str, Preset] = {
    "gru4rec": Preset("GRU4Rec (Hidasi et al.) trained by cloud jobs, served on devices",
                      lambda ctx: _sequence_pipeline("gru4rec", ctx)),
    "sasrec": Preset("SASRec (Kang & McAuley) trained by cloud jobs, served on devices",
                     lambda ctx: _sequence_pipeline("sasrec", ctx)),
    "din": Preset("DIN (Zhou et al.), the MC²-SF / DCCL cloud model, served on devices",
                  lambda ctx: _sequence_pipeline("din", ctx)),
    "mc2sf": Preset("MC²-SF: device negative memory and fast GRUs, F2S uploads, slow cloud "
                    "DIN, S2F hints", lambda ctx: mc2sf_pipeline("mc2sf", ctx)),
    "mc2sf-f2s": Preset("MC²-SF ablation: the slow DIN with uploaded negative memory (F2S), "
                        "no hints", lambda ctx: mc2sf_pipeline("mc2sf-f2s", ctx)),
    "mc2sf-fast": Preset("MC²-SF ablation: the independent fast component (GRU_p, GRU_n)",
                         lambda ctx: mc2sf_pipeline("mc2sf-fast", ctx)),
    "dccl": Preset("DCCL: MetaPatch on devices (metapatch + shared basis), MoMoDistill "
                   "rounds in the cloud", lambda ctx: dccl_pipeline("dccl", ctx)),
    "dccl-e": Preset("DCCL ablation: MetaPatch on devices, plain incremental DIN in the "
                     "cloud", lambda ctx: dccl_pipeline("dccl-e", ctx)),
    "scn": Preset("CoCorrRec ablation: the on-device self-correction network (TTT-Linear "
                  "state per device), cloud-trained", lambda ctx: cocorrrec_pipeline("scn", ctx)),
    "cocorrrec": Preset("CoCorrRec: on-device TTT self-correction, corrected click by click by "
                        "the cloud's GCN", lambda ctx: cocorrrec_pipeline("cocorrrec", ctx)),
    "ec-cdr": Preset("EC-CDR (DUET-style): each device asks the cloud for generated "
                     "parameters at every click (IntellectReq's upper bound)",
                     lambda ctx: intellectreq_pipeline("ec-cdr", ctx)),
    "ec-cdr-static": Preset("EC-CDR with the generic parameters only: devices never ask "
                            "(IntellectReq's lower bound)",
                            lambda ctx: intellectreq_pipeline("ec-cdr-static", ctx)),
    "random": Preset("EC-CDR, each click asking with the --request-budget probability",
                     lambda ctx: intellectreq_pipeline("random", ctx)),
    "drift": Preset("EC-CDR, a device asking when its clicks since its parameters drifted "
                    "from the ones they came from (ADWIN's normalised gap; the cloud sets "
                    "the cut from --request-budget)",
                    lambda ctx: intellectreq_pipeline("drift", ctx)),
    "lof": Preset("EC-CDR, a device asking when its newest click is a local outlier (LOF, "
                  "k = 2) among its click window; the cloud sets the cut from "
                  "--request-budget", lambda ctx: intellectreq_pipeline("lof", ctx)),
    "ocsvm": Preset("EC-CDR, a device asking when its newest click falls outside a one-class "
                    "SVM fitted on its click window; the cloud sets the cut from "
                    "--request-budget", lambda ctx: intellectreq_pipeline("ocsvm", ctx)),
    "intellectreq": Preset("IntellectReq: a device asks for EC-CDR parameters when its "
                           "mis-recommendation score is under the cloud's load-aware "
                           "threshold", lambda ctx: intellectreq_pipeline("intellectreq", ctx)),
    "intellectreq-drift": Preset("IntellectReq whose MRD also reads the drift statistic D of "
                                 "the device's clicks since its parameters' window",
                                 lambda ctx: intellectreq_pipeline("intellectreq-drift", ctx)),
    "river-mf": Preset("river's online BiasedMF, learning from every click",
                       lambda ctx: Pipeline(processor=RiverMFProcessor(ctx.n_items, ctx.seed))),
    "popularity": Preset("items ranked by their clicks so far",
                         lambda ctx: Pipeline(processor=PopularityProcessor(ctx.n_items))),
}


def check_methods(methods: list[str]) -> None:
    """ValueError naming the first of ``methods`` that is no preset."""
    for method in methods:
        if method not in PRESETS:
            known = ", ".join(sorted(PRESETS))
            raise ValueError(f"unknown method {method!r}; known: {known}")


def build_pipeline(method: str, ctx: PresetContext) -> Pipeline:
    """The pipeline of preset ``method``."""
    check_methods([method])
    return PRESETS[method].build(ctx)
