"""The layer table's rows for coupled groups: what couples them, and the costs of every producer."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from snp_engine import api
from snp_engine.models import load_model
from snp_gui.layer_rows import layer_costs, layer_rows
from tests.gui.helpers import small_vit_analysis


def test_stream_row_says_what_couples_it_and_owns_every_producer():
    torch.set_num_threads(1)
    loaded = load_model("demo-resnet")
    images = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    analysis = api.analyze(loaded.model, TensorDataset(images, torch.zeros(16, dtype=torch.long)))
    rows = {r["name"]: r for r in layer_rows(analysis, loaded.model)}
    assert rows["conv1"]["type"] == "Conv2d · produced by 2 layers, read by 3"
    assert rows["layer1.0.conv1"]["type"] == "Conv2d"  # a block's inner channels: one producer, one reader
    model = loaded.model
    # the stream's row: the stem conv and the block's last conv, with their BatchNorms
    own = sum(
        p.numel() for m in (model.conv1, model.bn1, model.layer1[0].conv2, model.layer1[0].bn2) for p in m.parameters()
    )
    assert rows["conv1"]["params"] == own
    params, _ = layer_costs(analysis, {"conv1": 16})
    assert params["conv1"] < own


def test_attention_heads_are_rows_of_their_own_counted_in_heads():
    model, analysis = small_vit_analysis(layers=1)
    rows = {r["name"]: r for r in layer_rows(analysis, model)}
    heads = rows["encoder.layers.encoder_layer_0.self_attention"]
    assert heads["type"] == "MultiheadAttention · heads of 8 channels" and heads["units"] == 4
    # the row owns the q/k/v projection (3·32·32 weights + 3·32 biases) and the attention products
    assert heads["params"] == 3 * 32 * 32 + 3 * 32 and heads["flops"] > 0
    params, flops = layer_costs(analysis, {heads["name"]: 2})
    assert params[heads["name"]] == heads["params"] // 2 and flops[heads["name"]] == heads["flops"] / 2
