"""The architecture graph: layer calls in execution order, shapes, data flow through functional
operations, and each layer's part in the unit groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from snp_engine import workflows
from snp_engine.errors import SnpError
from snp_engine.workflows import AnalysisOptions
from snp_engine.workflows.architecture import INPUT, architecture


class Branches(nn.Module):
    """Two branches concatenated, a shared ReLU called twice, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(1, 3, 3, padding=1)
        self.right = nn.Conv2d(1, 5, 1)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([self.act(self.left(x)), self.act(self.right(x))], dim=1)
        return self.head(joined.mean(dim=(2, 3)))


def test_nodes_edges_and_shapes_follow_the_forward_pass():
    graph = architecture(Branches(), (1, 6, 6))
    ids = [node.id for node in graph.nodes]
    assert ids == [INPUT, "left", "act", "right", "act#2", "head"]
    assert graph.node("act#2").module == "act" and graph.node("act#2").label == "act"
    assert graph.node("left").output_shape == (3, 6, 6) and graph.node("right").input_shape == (1, 6, 6)
    assert graph.node("head").input_shape == (8,) and graph.node("head").output_shape == (2,)
    edges = set(graph.edges)
    # the concatenation and the mean are functional: the head reads both branches' activations
    assert {(INPUT, "left"), (INPUT, "right"), ("left", "act"), ("right", "act#2")} <= edges
    assert {("act", "head"), ("act#2", "head")} <= edges and len(edges) == 6
    columns = graph.columns()
    assert columns[INPUT] == 0 and columns["left"] == columns["right"] == 1 and columns["head"] == 3


@pytest.fixture(scope="module")
def resnet():
    prepared = workflows.prepare("demo-resnet", "digits", dense_check=False)
    analysis = workflows.analyse(prepared, AnalysisOptions(samples=32, batch_size=32))
    return prepared, analysis


def test_roles_come_from_the_unit_groups(resnet):
    prepared, analysis = resnet
    graph = architecture(prepared.model.model, prepared.input_shape, analysis)
    stream = next(links for links in graph.groups.values() if len(links.producers) > 1)
    assert stream.coupled
    for name in stream.producers:
        node = graph.node(name)
        assert node.group == stream.name and node.role == "producer"
    for name in stream.channelwise:
        assert graph.node(name).role == "channelwise" and graph.node(name).group == stream.name
    for name in stream.readers:
        assert stream.name in graph.node(name).reads
    assert {node.group for node in graph.nodes if node.role == "producer"} == set(analysis.names)
    excluded = {e.name: e.reason for e in analysis.excluded}
    assert excluded and all(graph.node(name).excluded == reason for name, reason in excluded.items())
    assert graph.node("layer1.0.conv1").block == "layer1.0"
    # the skip connection: the block's output ReLU reads the block's input as well as its last BatchNorm
    assert ("relu", "layer1.0.relu#2") in graph.edges and ("layer1.0.bn2", "layer1.0.relu#2") in graph.edges
    assert [node.order for node in graph.nodes] == list(range(-1, len(graph.nodes) - 1))


def test_torchscript_is_refused_in_one_line():
    scripted = torch.jit.script(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(SnpError, match="TorchScript"):
        architecture(scripted, (2,))


class PreNorm(nn.Module):
    """A pre-norm residual block, as in a ViT: x + fc(norm(x)); its sum passes no module."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(self.norm(x))


def test_a_residual_stream_is_read_from_the_two_blocks_before_and_blocks_have_their_types():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(*[PreNorm() for _ in range(5)]), nn.Linear(4, 2))
    graph = architecture(model, (4,))
    into = {target: {source for source, t in graph.edges if t == target} for _, target in graph.edges}
    # block 4's norm reads the stream: blocks 3 and 2 (the skip over one block), not every block since the first
    assert into["1.4.norm"] == {"1.3.fc", "1.2.fc"}
    assert into["1.1.norm"] == {"1.0.fc", "0"} and into["1.0.norm"] == {"0"}
    assert into["2"] == {"1.4.fc", "1.3.fc"}
    assert len(graph.edges) < 3 * len(graph.nodes)  # without the stop: every earlier fc, quadratic
    assert graph.blocks == {"1": "Sequential", **{f"1.{i}": "PreNorm" for i in range(5)}}
    assert [n.id for n in graph.members("1.2")] == ["1.2.norm", "1.2.fc"]
