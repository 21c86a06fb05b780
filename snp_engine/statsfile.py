"""The statistics file: what an analysis measured, so that a later run can plan and prune without
a forward pass.

Tensors (moments, consumer metric, filter norms, coverage) go into safetensors; groups, the cost
model and the settings into its JSON header. Orderings and curves are not stored: the analysis
recomputes them on loading. This module reads and writes :class:`StoredAnalysis` records only;
:mod:`snp_engine.analysis` turns them into an :class:`~snp_engine.analysis.Analysis`. Reading
checks every field and tensor, so a damaged or crafted file is one :class:`SnpError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from snp_engine.atomic import atomic_write
from snp_engine.costs import CostModel, LayerCost
from snp_engine.errors import ModelLoadError, SnpError
from snp_engine.groups import ExcludedGroup, Reader, UnitGroup
from snp_engine.headers import METADATA_KEY, FieldReader, describe, parse_json, read_safetensors_metadata, to_json
from snp_engine.results import GroupAnalysis, ReaderStatistics
from snp_engine.statistics import Moments
from snp_engine.version import __version__

ANALYSIS_KEY = "snp_analysis"
ANALYSIS_VERSION = 2  # 2: sums around a shift, readers of coupled groups
LAYOUTS = ("conv", "linear", "tokens", "flatten")
_MAX_GROUPS = 100_000
_MAX_UNITS = 1 << 20
_MAX_LAYERS = 1_000_000


@dataclass(frozen=True)
class StoredAnalysis:
    """Everything a statistics file holds: the per-group statistics and the settings they were
    ordered with."""

    groups: list[GroupAnalysis]
    excluded: list[ExcludedGroup]
    costs: CostModel
    input_shape: tuple[int, ...]
    ordering: str
    curve: str
    seed: int
    info: dict[str, Any] = field(default_factory=dict)


def write_statistics(stored: StoredAnalysis, path: str | Path) -> Path:
    """Write ``stored`` to ``path`` (atomically)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    groups = []
    for index, g in enumerate(stored.groups):
        prefix = f"group.{index}."
        first, *more = g.readers
        _put_reader(tensors, prefix, first)
        tensors[prefix + "weight_l1"] = g.weight_l1
        entry = {
            **asdict(g.group),
            "input_shape": list(g.input_shape),
            "norm": g.norm,
            "coverage": g.coverage is not None,
        }
        # each further reader of a coupled group: its statistics under group.<i>.reader.<j>.
        entry["more_readers"] = [
            {
                "consumer": r.consumer,
                "layout": r.reader.layout,
                "start": r.reader.start,
                "width": r.reader.width,
                "groups": r.reader.groups,
                "input_shape": list(r.input_shape),
                "norm": r.norm,
                "coverage": r.coverage is not None,
            }
            for r in more
        ]
        for number, reader in enumerate(more, start=1):
            _put_reader(tensors, f"{prefix}reader.{number}.", reader)
        groups.append(entry)
    costs = stored.costs
    header = {
        "format": ANALYSIS_VERSION,
        "snp_version": __version__,
        "groups": groups,
        "excluded": [asdict(e) for e in stored.excluded],
        "costs": {
            "layers": [asdict(layer) for layer in costs.layers],
            "other_params": int(costs.other_params),
            "other_macs": float(costs.other_macs),
            "units": dict(costs.units),
        },
        "input_shape": list(stored.input_shape),
        "ordering": stored.ordering,
        "curve": stored.curve,
        "seed": stored.seed,
        "info": stored.info,
    }
    metadata = {ANALYSIS_KEY: str(ANALYSIS_VERSION), METADATA_KEY: to_json(header)}
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return atomic_write(path, lambda temp: save_file(state, str(temp), metadata=metadata))


def _put_reader(tensors: dict[str, torch.Tensor], prefix: str, reader: ReaderStatistics) -> None:
    for key, value in reader.moments.state().items():
        tensors[prefix + key] = value.reshape(-1) if key == "count" else value
    tensors[prefix + "metric"] = reader.metric
    if reader.coverage is not None:
        tensors[prefix + "coverage"] = reader.coverage


def read_statistics(path: str | Path) -> StoredAnalysis:
    """Read a file written by :func:`write_statistics`; anything wrong with it is an :class:`SnpError`."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SnpError(f"statistics file '{path}' does not exist")
    try:
        raw = read_safetensors_metadata(path, "an snp statistics file")
    except ModelLoadError as exc:
        raise SnpError(str(exc)) from None
    if ANALYSIS_KEY not in raw:
        raise SnpError(f"{path}: not an snp statistics file (write one with 'snp analyze --out')")
    try:
        version = int(raw[ANALYSIS_KEY])
    except ValueError:
        raise SnpError(f"{path}: unreadable snp statistics format version '{raw[ANALYSIS_KEY][:60]}'") from None
    if version > ANALYSIS_VERSION:
        raise SnpError(
            f"{path}: written by a newer snp (statistics format {str(version)[:60]}; this snp {__version__} reads "
            f"format {ANALYSIS_VERSION} and older); upgrade snp"
        )
    header = parse_json(raw.get(METADATA_KEY), path, "the statistics header", SnpError)
    if not isinstance(header, dict):
        raise SnpError(f"{path}: the statistics header is not a JSON object but {describe(header)}")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise SnpError(f"{path}: damaged snp statistics file ({type(exc).__name__}: {exc})") from None
    return _Reader(path, header, tensors).stored()


class _Reader:
    """Builds a :class:`StoredAnalysis` from a parsed header and its tensors, checking each field."""

    def __init__(self, path: Path, header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        self.path = path
        self.header = header
        self.tensors = tensors
        self.read = FieldReader(path, "snp statistics file", SnpError)

    def get(self, mapping: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in mapping:
            raise self.read.fail(f"{where}{key}", "is missing")
        return mapping[key]

    def stored(self) -> StoredAnalysis:
        read, header = self.read, self.header
        entries = read.sequence(self.get(header, "groups", ""), "groups", longest=_MAX_GROUPS)
        groups = [self.group(index, entry) for index, entry in enumerate(entries)]
        excluded = []
        for index, entry in enumerate(read.sequence(self.get(header, "excluded", ""), "excluded", longest=_MAX_LAYERS)):
            where = f"excluded[{index}]."
            entry = read.mapping(entry, where[:-1])
            excluded.append(
                ExcludedGroup(
                    read.text(self.get(entry, "name", where), where + "name"),
                    read.integer(self.get(entry, "units", where), where + "units", high=_MAX_UNITS),
                    read.text(self.get(entry, "reason", where), where + "reason"),
                )
            )
        return StoredAnalysis(
            groups,
            excluded,
            self.costs(read.mapping(self.get(header, "costs", ""), "costs")),
            tuple(read.integers(self.get(header, "input_shape", ""), "input_shape", low=1, high=1 << 16, longest=4)),
            read.text(self.get(header, "ordering", ""), "ordering", longest=100),
            read.text(self.get(header, "curve", ""), "curve", longest=100),
            read.integer(self.get(header, "seed", ""), "seed", high=2**63 - 1),
            read.mapping(header.get("info"), "info", optional=True),
        )

    def group(self, index: int, entry: Any) -> GroupAnalysis:
        read, where = self.read, f"groups[{index}]."
        entry = read.mapping(entry, where[:-1])
        units = read.integer(self.get(entry, "units", where), where + "units", low=1, high=_MAX_UNITS, what="units")
        channelwise = read.sequence(entry.get("channelwise"), where + "channelwise", optional=True)
        producers = read.sequence(entry.get("producers"), where + "producers", optional=True, longest=_MAX_LAYERS)
        extra = read.sequence(entry.get("more_readers"), where + "more_readers", optional=True, longest=_MAX_LAYERS)
        prefix = f"group.{index}."
        # units of several channels (attention heads; files written before heads: one channel each)
        kind = read.text(entry.get("kind", "channels"), where + "kind", longest=20)
        if kind not in ("channels", "heads"):
            raise read.fail(where + "kind", f"is '{kind}', not 'channels' or 'heads'")
        block = read.integer(entry.get("block", 1), where + "block", low=1, high=max(_MAX_UNITS // units, 1))
        channels = units * block
        first = self.reader(entry, where, prefix, channels)
        more = tuple(
            self.reader(
                read.mapping(e, f"{where}more_readers[{j}]"),
                f"{where}more_readers[{j}].",
                f"{prefix}reader.{j + 1}.",
                channels,
            )
            for j, e in enumerate(extra)
        )
        unit = UnitGroup(
            read.text(self.get(entry, "name", where), where + "name"),
            first.consumer,
            units,
            first.reader.layout,
            tuple(read.text(name, f"{where}channelwise[{i}]") for i, name in enumerate(channelwise)),
            tuple(r.reader for r in more),
            tuple(read.text(name, f"{where}producers[{i}]") for i, name in enumerate(producers)),
            first.reader.start,
            first.reader.width,
            first.reader.groups,
            self.parts(entry, where, units),
            block,
            kind,
        )
        return GroupAnalysis(
            unit,
            first.moments,
            first.input_shape,
            first.metric,
            self.tensor(prefix + "weight_l1", (units,)),
            first.norm,
            first.coverage,
            more=more,
        )

    def parts(self, entry: Mapping[str, Any], where: str, units: int) -> int:
        """The equal parts a group keeps as many units of (1 in files written before grouped convs)."""
        parts = self.read.integer(entry.get("parts", 1), where + "parts", low=1, high=units)
        if units % parts:
            raise self.read.fail(where + "parts", f"is {parts}, which does not divide the group's {units} units")
        return parts

    def reader(self, entry: Mapping[str, Any], where: str, prefix: str, units: int) -> ReaderStatistics:
        """One reader's statistics: ``entry`` names it (consumer, layout, input shape, norm, whether
        a coverage map is stored), the tensors under ``prefix`` hold its moments, metric, coverage."""
        read = self.read
        layout = read.text(self.get(entry, "layout", where), where + "layout", longest=20)
        if layout not in LAYOUTS:
            raise read.fail(where + "layout", f"is '{layout}', not one of {', '.join(LAYOUTS)}")
        consumer = read.text(self.get(entry, "consumer", where), where + "consumer")
        # a slice of a concatenated input (files written before concatenations: the whole input)
        width = read.integer(entry.get("width", 0), where + "width", high=_MAX_UNITS)
        start = read.integer(entry.get("start", 0), where + "start", high=max(width - units, 0))
        if width and width < units:
            raise read.fail(where + "width", f"is {width}, fewer channels than the group's {units} units")
        groups = read.integer(entry.get("groups", 1), where + "groups", low=1, high=units)
        if units % groups:
            raise read.fail(where + "groups", f"is {groups}, which does not divide the group's {units} units")
        state = {
            "count": self.tensor(prefix + "count", (1,)).reshape(()),
            "total": self.tensor(prefix + "total", (units,)),
            "outer": self.tensor(prefix + "outer", (units, units)),
        }
        if prefix + "shift" in self.tensors:  # files written before the shift hold plain sums: no shift
            state["shift"] = self.tensor(prefix + "shift", (units,))
        moments = Moments.from_state(state)
        if float(moments.count) < 0 or float(moments.count) != int(moments.count):
            raise read.fail(prefix + "count", "is not a number of samples")
        coverage = None
        if read.flag(entry.get("coverage", False), where + "coverage"):
            coverage = self.tensor(prefix + "coverage", None)
            if coverage.ndim != 2 or not bool(((coverage >= 0) & (coverage <= 1)).all()):
                raise read.fail(prefix + "coverage", "must be a matrix of fractions in [0, 1]")
        shape = read.integers(
            self.get(entry, "input_shape", where), where + "input_shape", low=1, high=1 << 20, longest=4
        )
        return ReaderStatistics(
            Reader(consumer, layout, start, width, groups),
            moments,
            tuple(shape),
            self.tensor(prefix + "metric", (units, units)),
            read.optional_text(entry.get("norm"), where + "norm"),
            coverage,
        )

    def tensor(self, key: str, shape: tuple[int, ...] | None) -> torch.Tensor:
        """The float64 tensor ``key``, of ``shape`` (any if ``None``), all finite."""
        value = self.tensors.get(key)
        if value is None:
            raise self.read.fail(key, "is missing from the tensors")
        if shape is not None and tuple(value.shape) != shape:
            raise self.read.fail(key, f"has shape {tuple(value.shape)}, expected {shape}")
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise self.read.fail(key, "must hold finite floating-point numbers")
        return value.double()

    def cost_groups(self, entry: Mapping[str, Any], where: str, units: Mapping[str, int]) -> dict[str, Any]:
        """A cost layer's groups: its output group, its input and channel groups with their widths."""
        read = self.read

        def group_name(value: Any, key: str) -> str | None:
            name = read.optional_text(value, where + key)
            if name is not None and name not in units:
                raise read.fail(where + key, f"names '{name[:60]}', which has no unit count in costs.units")
            return name

        groups: dict[str, Any] = {"out_group": group_name(entry.get("out_group"), "out_group")}
        for kind in ("in", "channel"):
            if f"{kind}_groups" in entry:
                listed = read.sequence(entry[f"{kind}_groups"], where + f"{kind}_groups", longest=_MAX_GROUPS)
                names = [group_name(n, f"{kind}_groups[{i}]") for i, n in enumerate(listed)]
            else:  # files written before concatenations: one group or none
                names = [group_name(entry.get(f"{kind}_group"), f"{kind}_group")]
            groups[f"{kind}_groups"] = tuple(n for n in names if n is not None)
            width = read.integer(entry.get(f"{kind}_width", 0), where + f"{kind}_width", high=_MAX_UNITS)
            if width and width < sum(units[n] for n in groups[f"{kind}_groups"]):
                raise read.fail(where + f"{kind}_width", "is smaller than its groups' units")
            groups[f"{kind}_width"] = width
        groups["new_bias"] = read.integer(entry.get("new_bias", 0), where + "new_bias", high=_MAX_UNITS)
        return groups

    def costs(self, cost: Mapping[str, Any]) -> CostModel:
        read = self.read
        units = {
            name: read.integer(n, f"costs.units.{name}", low=1, high=_MAX_UNITS, what="units")
            for name, n in read.mapping(self.get(cost, "units", "costs."), "costs.units", longest=_MAX_GROUPS).items()
        }
        layers = []
        entries = read.sequence(self.get(cost, "layers", "costs."), "costs.layers", longest=_MAX_LAYERS)
        for index, entry in enumerate(entries):
            where = f"costs.layers[{index}]."
            entry = read.mapping(entry, where[:-1])
            groups = self.cost_groups(entry, where, units)
            macs = self.get(entry, "macs", where)
            read.number(macs, where + "macs")
            layers.append(
                LayerCost(
                    read.text(self.get(entry, "name", where), where + "name"),
                    macs,
                    read.integer(self.get(entry, "weight_params", where), where + "weight_params", high=2**62),
                    read.integer(self.get(entry, "bias_params", where), where + "bias_params", high=2**62),
                    **groups,
                )
            )
        return CostModel(
            tuple(layers),
            read.integer(self.get(cost, "other_params", "costs."), "costs.other_params", high=2**62),
            read.number(self.get(cost, "other_macs", "costs."), "costs.other_macs"),
            units,
        )


__all__ = ["ANALYSIS_KEY", "ANALYSIS_VERSION", "StoredAnalysis", "read_statistics", "write_statistics"]
