"""The resource table (CoCorrRec Table 4 / Fig. 4): parameter counts of the models dcrec
builds, FLOPs and peak memory that grow with the history, and ``dcrec resources``."""

from __future__ import annotations

import json

import pytest
import torch
from dcrec.replay.resources import (
    METHODS,
    LiveTensorBytes,
    count_flops,
    markdown,
    peak_memory,
    plot,
    resource_table,
)
from dcrec.streams.presets import PresetContext, sequence_model_factory
from typer.testing import CliRunner

from dcrec.cli import app

N_ITEMS = 300
LENGTHS = (10, 15, 20, 25)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return resource_table(N_ITEMS, LENGTHS)


def _built(method: str) -> torch.nn.Module:
    return sequence_model_factory(method, PresetContext(n_users=1, n_items=N_ITEMS, seed=0))()


def test_parameter_counts_are_those_of_the_models_dcrec_builds(rows):
    by_method = {r["method"]: r for r in rows}
    for method in METHODS:
        model = _built(method)
        row = by_method[method]
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["embedding_params"] == (N_ITEMS + 1) * model.item_embedding.embedding_dim
    gcn = _built("cocorrrec").gcn
    gcn_params = sum(p.numel() for p in gcn.parameters())
    assert by_method["cocorrrec"]["cloud_params"] == gcn_params > 0
    assert by_method["cocorrrec"]["params"] - by_method["scn"]["params"] == gcn_params
    assert all(by_method[m]["cloud_params"] == 0 for m in METHODS if m != "cocorrrec")


def test_flops_and_memory_grow_with_the_history(rows):
    for r in rows:
        assert r["lengths"] == list(LENGTHS) and r["candidates"] == 101
        assert all(a < b for a, b in zip(r["flops"], r["flops"][1:], strict=False)), r
        assert r["flops_per_token"] > 0
        assert r["peak_memory_bytes"][-1] > r["peak_memory_bytes"][0] > 0, r
        assert r["memory_per_token"] > 0


def test_flops_match_the_models_arithmetic(rows):
    by_method = {r["method"]: r for r in rows}
    # GRU4Rec (bias-free GRU, d = h = 64): 2 · (64·192 + 64·192) FLOPs per token
    assert by_method["gru4rec"]["flops_per_token"] == pytest.approx(2 * 2 * 64 * 192)
    # SASRec's attention is quadratic in L: its growth per token itself grows
    f = by_method["sasrec"]["flops"]
    assert f[3] - f[2] > f[1] - f[0]
    # only cocorrrec spends FLOPs in the cloud, and its GCN's share grows with L
    cloud = by_method["cocorrrec"]["cloud_flops"]
    assert 0 < cloud[0] < cloud[-1] < by_method["cocorrrec"]["flops"][-1]
    assert all(not any(r["cloud_flops"]) for r in rows if r["method"] != "cocorrrec")
    on_device = [a - b for a, b in zip(by_method["cocorrrec"]["flops"], cloud, strict=True)]
    assert all(d > s for d, s in zip(on_device, by_method["scn"]["flops"], strict=True))


def test_the_fused_transformer_path_is_counted_and_restored():
    model = _built("sasrec").eval()
    inputs = (torch.randint(1, N_ITEMS + 1, (1, 20)), torch.tensor([20]),
              torch.randint(1, N_ITEMS + 1, (1, 101)))
    flops, _ = count_flops(model, inputs)
    # 2 blocks of Q, K, V, O projections and the 64 → 256 → 64 feed-forward at 20 tokens
    assert flops > 2 * 20 * 2 * (4 * 64 * 64 + 2 * 64 * 256)
    assert torch.backends.mha.get_fastpath_enabled()


def test_live_tensor_bytes_sees_intermediates_and_frees():
    x = torch.ones(1000)
    mode = LiveTensorBytes({x.untyped_storage().data_ptr()})
    with mode:
        y = x * 2          # 4000 B
        z = y + 1          # 4000 B, 8000 B live
        del y              # back to 4000 B
        w = z.view(10, 100)  # a view: nothing new
    assert mode.peak == 8000
    assert mode.current == 4000
    del z, w
    assert mode.current == 0


def test_peak_memory_of_din_grows_with_candidates_times_length():
    model = _built("din").eval()

    def peak(length: int, candidates: int) -> int:
        return peak_memory(model, (torch.randint(1, N_ITEMS + 1, (1, length)),
                                   torch.tensor([length]),
                                   torch.randint(1, N_ITEMS + 1, (1, candidates))))

    assert peak(20, 101) > 1.5 * peak(10, 101)
    assert peak(20, 101) > 1.5 * peak(20, 50)


def test_markdown_and_plot_cover_every_method(rows, tmp_path):
    table = markdown(rows)
    for method in METHODS:
        assert sum(line.startswith(f"| {method} |") for line in table.splitlines()) == 2
    assert "ΔFLOPs / token" in table and "L=25" in table
    path = tmp_path / "fig.png"
    plot(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


@pytest.mark.parametrize("kwargs", [{"lengths": (10,)}, {"lengths": (10, 10)},
                                    {"lengths": (10, 60), "methods": ("sasrec",)},
                                    {"methods": ("bert4rec",)}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        resource_table(N_ITEMS, **kwargs)


def test_cli_writes_json_markdown_and_plot(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["resources", "--dataset", "world", "--lengths", "5,12",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "resources-world.json").read_text())
    assert data["dataset"] == "world" and data["n_items"] == 1000
    assert [r["method"] for r in data["rows"]] == list(METHODS)
    assert all(r["lengths"] == [5, 12] for r in data["rows"])
    assert (tmp_path / "resources-world.md").read_text() in result.output
    assert (tmp_path / "resources-world.png").stat().st_size > 10_000
    bad = runner.invoke(app, ["resources", "--dataset", "world", "--lengths", "ten"])
    assert bad.exit_code == 2 and "--lengths" in bad.output
