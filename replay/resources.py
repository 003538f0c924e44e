"""``dcrec resources``: what one inference of each sequence model costs as the click
history grows — parameters, FLOPs and peak memory, with their growth per token, in the
manner of CoCorrRec's Table 4 (parameters, FLOPs, ΔFLOPs, memory, Δmemory) and Fig. 4
(FLOPs and memory against sequence length) (Zhan et al., IJCAI 2025).

Every model is built by :func:`dcrec.streams.presets.sequence_model_factory`, so the
table shows the models (and sizes) dcrec runs, and is measured the way dcrec serves it:
``model.eval()``, under ``torch.inference_mode()``, through ``model.score``.

What one inference is
    One user (``N = 1``) with a full history of ``L`` clicks (``lengths = [L]``, random
    item ids) scores ``C = 101`` candidates — the clicked item and the 100 sampled
    negatives every dcrec evaluation ranks it against (``n_negatives = 100``). The
    dot-product models (gru4rec, sasrec, scn, cocorrrec) encode the history once and
    take 101 dot products; DIN runs its target attention once per candidate, so its cost
    grows with ``C · L``. For scn and cocorrrec the forward reads the whole history from
    the start (``SCN.outputs``), as a model without a stored state would: on a device
    dcrec keeps the TTT state and recomputes only the current mini-batch per click, so
    the per-click cost there does not grow with ``L``. cocorrrec's forward includes the
    cloud's GCN (Eq. 13) and the corrected second pass of each mini-batch (Eq. 14–15).

Parameters
    ``sum(p.numel())`` over the model's parameters; ``embedding_params`` are those of the
    item embedding table (which grows with the catalogue); ``cloud_params`` those of
    cocorrrec's global correction network ``model.gcn`` — the share that stays in the
    cloud (its two fusion weights P and Q, Eq. 15, are counted there too; 0 for the
    other models).

FLOPs
    :class:`torch.utils.flop_counter.FlopCounterMode`: matrix products (``mm``, ``addmm``,
    ``bmm``, …, 2 FLOPs per multiply-add) after decomposing composite ops such as
    ``linear`` and ``gru``; element-wise work (norms, activations, softmax, the TTT
    update's element-wise terms) is not counted. The counter does not know the CPU
    attention kernel ``_scaled_dot_product_flash_attention_for_cpu``, so it is given
    that kernel's two products (``Q Kᵀ`` and ``A V``, the full ``L × L`` as the counter
    does for the other attention kernels). ``cloud_flops`` are those spent inside
    ``model.gcn``.

Peak memory
    The peak, during the forward, of the bytes of live tensors the forward created: a
    ``TorchDispatchMode`` adds the bytes of every new storage an operator returns and a
    weak reference takes them off when the storage is freed; composite operators are
    decomposed first so that their intermediate tensors are seen. Parameters and the
    inputs are not counted (they are alive before and after), nor are scratch buffers a
    kernel allocates and frees inside itself.

Both counts need every product and intermediate tensor to pass through the dispatcher,
so PyTorch's fused Transformer fast path (one opaque ``_transformer_encoder_layer_fwd``
per SASRec block in inference) is switched off while measuring; the unfused path
computes the same products.

Growth per token
    ``flops_per_token`` and ``memory_per_token`` are the least-squares slopes of FLOPs and
    peak memory over the measured lengths (the paper's ΔFLOPs and Δmemory). They are
    exact for costs linear in ``L``; for SASRec, whose attention is quadratic in ``L``,
    the slope is the mean growth over the range. Peak memory grows in steps where the
    peak moves between stages of the forward (e.g. the 101 candidate embeddings) or
    with SCN's mini-batches of 10 tokens, so its slope is an average too.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dcrec.models.base import SequentialRecommender
from dcrec.streams.presets import PresetContext, sequence_model_factory
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

METHODS = ("gru4rec", "sasrec", "din", "scn", "cocorrrec")
LENGTHS = (10, 15, 20, 25)
CANDIDATES = 101  # the clicked item and dcrec's 100 sampled negatives


def _cpu_flash_attention_flop(query_shape: Sequence[int], key_shape: Sequence[int],
                              value_shape: Sequence[int], *args: Any,
                              out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of ``softmax(Q Kᵀ) V`` for ``[B, H, L, E]`` shapes: two batched products."""
    b, h, l_q, e = query_shape
    l_k, e_v = key_shape[2], value_shape[3]
    return 2 * b * h * l_q * l_k * e + 2 * b * h * l_q * l_k * e_v


_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flop,
}


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the live tensors created under the mode, and their peak.

    Every operator's outputs are looked at: a storage not seen before (and not in
    ``known``, the storages that existed before — parameters, inputs) adds its bytes;
    a weak reference to it takes them off when it is freed. Views and in-place results
    share a storage and add nothing. Composite operators are decomposed first, so the
    intermediate tensors of, e.g., ``gru`` or ``linear`` count."""

    def __init__(self, known: set[int]) -> None:
        super().__init__()
        self.known = known
        self.live: dict[int, tuple[int, weakref.ref]] = {}
        self.current = 0
        self.peak = 0

    def _freed(self, key: int, ref: weakref.ref) -> None:
        entry = self.live.get(key)
        if entry is not None and entry[1] is ref:
            del self.live[key]
            self.current -= entry[0]

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.known:
            return
        entry = self.live.get(key)
        if entry is not None and entry[1]() is not None:
            return  # a view of (or an in-place result in) a storage already counted
        if entry is not None:  # the address was freed and reused before the callback ran
            self.current -= entry[0]
        ref = weakref.ref(storage, lambda r, k=key: self._freed(k, r))
        self.live[key] = (size, ref)
        self.current += size
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        with self:
            decomposed = func.decompose(*args, **kwargs)
        out = func(*args, **kwargs) if decomposed is NotImplemented else decomposed
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out


@contextmanager
def _unfused_attention():
    """PyTorch's fused Transformer fast path off (restored on exit)."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def _inputs(n_items: int, length: int, candidates: int,
            seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One user's full history of ``length`` clicks and ``candidates`` items (shifted ids)."""
    generator = torch.Generator().manual_seed(seed)
    history = torch.randint(1, n_items + 1, (1, length), generator=generator)
    pool = torch.randint(1, n_items + 1, (1, candidates), generator=generator)
    return history, torch.tensor([length]), pool


def count_flops(model: SequentialRecommender, inputs: Sequence[torch.Tensor],
                cloud: nn.Module | None = None) -> tuple[int, int]:
    """FLOPs of ``model.score(*inputs)``, and those spent inside ``cloud`` (0 if None)."""
    counter = FlopCounterMode(display=False, custom_mapping=_FLOP_FORMULAS)
    inside = {"start": 0, "total": 0}
    hooks = []
    if cloud is not None:
        def enter(module: nn.Module, args: Any) -> None:
            inside["start"] = counter.get_total_flops()

        def leave(module: nn.Module, args: Any, output: Any) -> None:
            inside["total"] += counter.get_total_flops() - inside["start"]

        hooks = [cloud.register_forward_pre_hook(enter), cloud.register_forward_hook(leave)]
    try:
        with _unfused_attention(), torch.inference_mode(), counter:
            model.score(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return counter.get_total_flops(), inside["total"]


def callable_flops(call: Callable[[], object]) -> int:
    """FLOPs of ``call()``, counted as :func:`count_flops` counts them."""
    counter = FlopCounterMode(display=False, custom_mapping=_FLOP_FORMULAS)
    with _unfused_attention(), torch.inference_mode(), counter:
        call()
    return counter.get_total_flops()


def peak_memory(model: SequentialRecommender, inputs: Sequence[torch.Tensor]) -> int:
    """Peak bytes of live tensors created by ``model.score(*inputs)`` (see
    :class:`LiveTensorBytes`)."""
    existing = [*model.parameters(), *model.buffers(), *inputs]
    mode = LiveTensorBytes({t.untyped_storage().data_ptr() for t in existing})
    with _unfused_attention(), torch.inference_mode(), mode:
        model.score(*inputs)
    return mode.peak


def _slope(x: Sequence[int], y: Sequence[float]) -> float:
    """Least-squares slope of ``y`` over ``x``."""
    return float(np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)[0])


def _build(method: str, n_items: int, seed: int) -> SequentialRecommender:
    """The preset's model, built with a fixed seed without touching the global RNG."""
    factory = sequence_model_factory(method, PresetContext(n_users=1, n_items=n_items,
                                                           seed=seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory().eval()


def resource_table(n_items: int, lengths: tuple[int, ...] = LENGTHS,
                   methods: Sequence[str] = METHODS, candidates: int = CANDIDATES,
                   seed: int = 0) -> list[dict]:
    """One row per method: parameters, and FLOPs and peak memory of one inference (one
    user's history of each length in ``lengths`` scoring ``candidates`` items) with
    their growth per token. See the module docstring for how each is measured.

    Row keys: ``method``, ``params``, ``embedding_params``, ``cloud_params``,
    ``lengths``, ``candidates``, ``flops`` and ``cloud_flops`` (one per length),
    ``flops_per_token``, ``cloud_flops_per_token``, ``peak_memory_bytes`` (one per
    length), ``memory_per_token`` (bytes)."""
    lengths = tuple(int(length) for length in lengths)
    if len(set(lengths)) < 2 or min(lengths) < 1:
        raise ValueError(f"need at least two distinct positive lengths, not {lengths}")
    if n_items < 1 or candidates < 1:
        raise ValueError("n_items and candidates must be positive")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    rows = []
    for method in methods:
        model = _build(method, n_items, seed)
        max_len = getattr(model, "max_len", None)
        if max_len is not None and max(lengths) > max_len:
            raise ValueError(f"{method} reads at most {max_len} clicks, not {max(lengths)}")
        cloud = getattr(model, "gcn", None)
        flops, cloud_flops, memory = [], [], []
        for length in lengths:
            inputs = _inputs(n_items, length, candidates, seed)
            total, in_cloud = count_flops(model, inputs, cloud)
            flops.append(total)
            cloud_flops.append(in_cloud)
            memory.append(peak_memory(model, inputs))
        rows.append({
            "method": method,
            "params": sum(p.numel() for p in model.parameters()),
            "embedding_params": model.item_embedding.weight.numel(),
            "cloud_params": sum(p.numel() for p in cloud.parameters()) if cloud else 0,
            "lengths": list(lengths),
            "candidates": candidates,
            "flops": flops,
            "cloud_flops": cloud_flops,
            "flops_per_token": _slope(lengths, flops),
            "cloud_flops_per_token": _slope(lengths, cloud_flops),
            "peak_memory_bytes": memory,
            "memory_per_token": _slope(lengths, memory),
        })
    return rows


def _si(value: float, unit: str = "") -> str:
    """``1234567`` → ``1.23 M``."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip() if value == math.floor(value) else f"{value:.1f}"


def _kib(value: float) -> str:
    return f"{value / 1024:.1f} KiB"


def markdown(rows: list[dict]) -> str:
    """The table (CoCorrRec Table 4) at the longest length, then FLOPs and peak memory
    at every length (Fig. 4 as numbers)."""
    if not rows:
        return ""
    lengths, candidates = rows[0]["lengths"], rows[0]["candidates"]
    longest = lengths.index(max(lengths))
    lines = [
        f"### Resources per inference (one user, {candidates} candidates, "
        f"L = {max(lengths)} clicks)", "",
        "| method | params | w/o item emb. | in the cloud (GCN) | FLOPs | of which cloud "
        "| ΔFLOPs / token | peak memory | Δmemory / token |",
        "| --- |" + " ---: |" * 8,
    ]
    for r in rows:
        cells = [f"{r['params']:,}", f"{r['params'] - r['embedding_params']:,}",
                 f"{r['cloud_params']:,}" if r["cloud_params"] else "—",
                 _si(r["flops"][longest]),
                 _si(r["cloud_flops"][longest]) if r["cloud_flops"][longest] else "—",
                 _si(r["flops_per_token"]), _kib(r["peak_memory_bytes"][longest]),
                 f"{r['memory_per_token']:,.0f} B"]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    header = " | ".join(f"L={length}" for length in lengths)
    lines += ["", "### By history length (FLOPs; peak memory)", "",
              f"| method | {header} | {header} |",
              "| --- |" + " ---: |" * (2 * len(lengths))]
    for r in rows:
        cells = [_si(f) for f in r["flops"]] + [_kib(m) for m in r["peak_memory_bytes"]]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    lines += ["", "FLOPs count matrix products (2 per multiply-add), measured with "
              "`FlopCounterMode`; peak memory is that of the tensors the forward creates "
              "(parameters and inputs excluded); Δ are least-squares slopes over L "
              "(`dcrec.replay.resources`)."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path | str) -> None:
    """FLOPs and peak memory against history length, a line per method (CoCorrRec
    Fig. 4); cocorrrec's FLOPs without its cloud share are drawn dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (flops_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in rows:
        line, = flops_ax.plot(r["lengths"], np.asarray(r["flops"]) / 1e6, marker="o",
                              label=r["method"])
        if any(r["cloud_flops"]):
            on_device = np.subtract(r["flops"], r["cloud_flops"]) / 1e6
            flops_ax.plot(r["lengths"], on_device, marker="o", linestyle="--",
                          color=line.get_color(), label=f"{r['method']} w/o cloud GCN")
        memory_ax.plot(r["lengths"], np.asarray(r["peak_memory_bytes"]) / 1024, marker="o",
                       label=r["method"])
    candidates = rows[0]["candidates"] if rows else CANDIDATES
    flops_ax.set(xlabel="history length L", ylabel="MFLOPs per inference",
                 title=f"FLOPs (one user, {candidates} candidates)")
    memory_ax.set(xlabel="history length L", ylabel="peak memory (KiB)",
                  title="peak memory of the forward")
    for ax in (flops_ax, memory_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["CANDIDATES", "LENGTHS", "METHODS", "LiveTensorBytes", "count_flops", "markdown",
           "peak_memory", "plot", "resource_table"]
