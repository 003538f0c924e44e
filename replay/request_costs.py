"""What a parameter request costs, and what IntellectReq saves (Lv et al., WWW 2024,
Table 1 and Table 5), measured on dcrec's EC-CDR and request agent.

Per request: the bytes up (the click window, int32 ids, in a ``ParamRequest``) and down
(the generated dynamic layers, float16, in a ``ParamResponse``), both as encoded on the
wire; the cloud's FLOPs to generate the parameters and its measured time per request
(``ParameterService`` answering a batch). Per click on the device: the FLOPs and time
of the request decision (Ω over the window, the agent's code, MRD and DM's
uncertainty, one device at a time), and the time of the LOF and OC-SVM baselines'
decisions (a detector fitted on the window, no parameters to hold). The parameters a
device holds (static layers Ω and the agent) against those that stay in the cloud (the
generator).

The extrapolation multiplies the per-request figures by ``clicks_per_second`` × the
request rate: EC-CDR asks at every click, a request agent at its rate. FLOPs count
matrix products (``replay/resources.py``); the window is full (``max_len`` clicks), the
costliest case.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from dcrec.models.intellectreq import IntellectReqModel
from dcrec.models.request_baselines import NOVELTY
from dcrec.replay.resources import callable_flops
from dcrec.state.registry import ModelRegistry
from dcrec.streams.intellectreq_pipeline import ParameterService
from dcrec.streams.schema import ParamRequest, encode


def _params(modules: list[torch.nn.Module]) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def p50_p99_ms(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """p50 and p99 wall milliseconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(1000.0 * (time.perf_counter() - started))
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def request_costs(n_items: int, max_len: int = 50, dim: int = 32, seed: int = 0,
                  repeats: int = 200) -> dict:
    """The per-request and per-click costs of EC-CDR with IntellectReq's agent."""
    torch.manual_seed(seed)
    model = IntellectReqModel(n_items, dim).eval()
    rec, agent = model.rec, model.agent
    rng = np.random.default_rng(seed)
    window = torch.from_numpy(rng.integers(1, n_items + 1, (1, max_len)))
    length = torch.tensor([max_len])
    then, since = torch.zeros(1, dim), torch.ones(1)

    def decide() -> None:
        agent.mrs(then, agent.encoder(rec.user_state(window, length)), since)

    with torch.inference_mode():
        decision_p50, decision_p99 = p50_p99_ms(decide, repeats)

    # the baselines' edge inference (Table 1): a detector fitted on the window's item
    # embeddings and the newest click's score, one device at a time
    embedded = rec.item_embedding.weight.detach().numpy()[window.numpy()]
    baseline_ms = {}
    for name, novelty in NOVELTY.items():
        def decide_baseline(novelty=novelty) -> None:
            novelty(embedded, np.array([max_len]))

        decide_baseline()   # imports and first-call set-up
        baseline_ms[name] = p50_p99_ms(decide_baseline, repeats)

    registry = ModelRegistry()
    version = registry.publish("ir", model.state_dict()).version
    service = ParameterService(lambda: model, registry, "ir", max_len)
    ids = window[0].numpy().astype("<i4").tobytes()
    requests = [ParamRequest(device=d, ts=0, kind="params", summary=ids, version=version,
                             position=d) for d in range(repeats)]
    answers = service.respond(requests[:16])    # load the version once
    started = time.perf_counter()
    answers = service.respond(requests)
    generate_ms = 1000.0 * (time.perf_counter() - started) / len(requests)
    return {
        "edge_params": _params([rec.item_embedding, rec.seq_trans, rec.backbone,
                                rec.target_trans, agent]),
        "edge_params_without_embeddings": _params([rec.seq_trans, rec.backbone,
                                                   rec.target_trans, agent]),
        "cloud_params": _params([rec.generator]),
        "decision_flops": callable_flops(decide),
        "decision_ms_p50": decision_p50,
        "decision_ms_p99": decision_p99,
        "generate_flops": callable_flops(lambda: rec.generate(window, length)),
        "generate_ms_per_request": generate_ms,
        "baseline_decision_ms": baseline_ms,
        "bytes_up": len(encode(requests[0])),
        "bytes_down": len(encode(answers[0])),
        "max_len": max_len, "n_items": n_items,
    }


def extrapolate(costs: dict, clicks_per_second: float, rates: dict[str, float]) -> list[dict]:
    """Bandwidth and cloud compute at ``clicks_per_second`` for each request rate."""
    rows = []
    for name, rate in rates.items():
        requests = clicks_per_second * rate
        rows.append({"method": name, "request_rate": rate, "requests_per_second": requests,
                     "up_bytes_per_second": requests * costs["bytes_up"],
                     "down_bytes_per_second": requests * costs["bytes_down"],
                     "cloud_flops_per_second": requests * costs["generate_flops"],
                     "cloud_cores": requests * costs["generate_ms_per_request"] / 1000.0})
    return rows


def si_prefixed(value: float, unit: str) -> str:
    """``4.3e9, "B/s"`` → ``4.30 GB/s``."""
    for prefix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


def markdown(costs: dict, rows: list[dict], clicks_per_second: float) -> str:
    """Table 1 (costs) and Table 5 (extrapolation) as Markdown."""
    c = costs
    lines = [
        f"### What a parameter request costs (EC-CDR, window {c['max_len']}, "
        f"{c['n_items']:,} items)", "",
        "| | value |", "| --- | ---: |",
        f"| device parameters (Ω + request agent) | {c['edge_params']:,} "
        f"({c['edge_params_without_embeddings']:,} without the item embeddings) |",
        f"| cloud-only parameters (generator) | {c['cloud_params']:,} |",
        f"| device decision per click: FLOPs | {si_prefixed(c['decision_flops'], 'FLOP')} |",
        f"| device decision per click: time p50 / p99 | {c['decision_ms_p50']:.2f} / "
        f"{c['decision_ms_p99']:.2f} ms |",
        *(f"| {name} baseline decision per click: time p50 / p99 (no parameters) "
          f"| {p50:.2f} / {p99:.2f} ms |"
          for name, (p50, p99) in c["baseline_decision_ms"].items()),
        f"| cloud per request: FLOPs | {si_prefixed(c['generate_flops'], 'FLOP')} |",
        f"| cloud per request: time (batched) | {c['generate_ms_per_request']:.3f} ms |",
        f"| bytes up / down per request | {c['bytes_up']:,} / {c['bytes_down']:,} B |",
        "", f"### At {clicks_per_second:,.0f} clicks/s", "",
        "| method | request rate | requests/s | up | down | cloud FLOP/s | cloud cores |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['request_rate']:.3f} | {r['requests_per_second']:,.0f} "
            f"| {si_prefixed(r['up_bytes_per_second'], 'B/s')} "
            f"| {si_prefixed(r['down_bytes_per_second'], 'B/s')} "
            f"| {si_prefixed(r['cloud_flops_per_second'], 'FLOP/s')} | {r['cloud_cores']:,.1f} |")
    return "\n".join(lines) + "\n"
