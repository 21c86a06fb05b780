"""Crafted headers: an export or statistics file whose JSON header is deeply nested, has a field of
the wrong type or asks for an absurd size is refused in one line (CLI exit 2), never with an
internal error, a RecursionError or an attempt to allocate terabytes."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from snp_engine import io
from snp_engine.cli import main
from snp_engine.errors import ModelLoadError, SnpError
from snp_engine.headers import MAX_JSON_DEPTH, json_depth
from tests.engine.helpers import demo_model, digits, rewrite_safetensors

NESTED_TEXT = "[" * 100_000 + "]" * 100_000  # far beyond Python's recursion limit


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "vgg.safetensors"
    io.export_model(demo_model("demo-vgg"), path, arch="demo-vgg", num_classes=10, input_shape=(1, 8, 8))
    return path


@pytest.fixture(scope="module")
def statistics(tmp_path_factory):
    from snp_engine import api

    path = tmp_path_factory.mktemp("stats") / "vgg.stats.safetensors"
    api.analyze(demo_model("demo-vgg"), digits(), samples=64).save(path)
    return path


def _forged(export, tmp_path, change, **metadata):
    """A copy of ``export`` whose header is changed by ``change(header)`` (or whose metadata
    values are replaced outright)."""
    if change is not None:
        header = io.read_metadata(export)
        change(header)
        metadata.setdefault("snp", json.dumps(header))
    return rewrite_safetensors(export, tmp_path / "forged.safetensors", **metadata)


def _nest(depth: int):
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(header):
        target = header
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def _refused_in_one_line(capsys, path, pattern: str) -> str:
    code = main(["info", "--model", str(path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"snp: error: {path}: "), line
    assert "internal error" not in line and "Traceback" not in err
    assert len(line) < 400, line
    assert pattern in line, line
    return line


# ----------------------------------------------------------------------------------------------
# Through the command line


def test_deeply_nested_json_is_refused(capsys, export, tmp_path):
    path = _forged(export, tmp_path, None, snp=NESTED_TEXT)
    _refused_in_one_line(capsys, path, "nested too deeply")


def test_deeply_nested_field_is_refused(capsys, export, tmp_path):
    """Nesting that json.loads still manages would overflow copy.deepcopy of the model later."""
    path = _forged(export, tmp_path, _set("settings", "notes", _nest(500)))
    _refused_in_one_line(capsys, path, "nested too deeply")


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        (_set("num_classes", "10"), "'num_classes'", "must be a whole number, not the string '10'"),
        (_set("num_classes", 10.5), "'num_classes'", "must be a whole number"),
        (_set("num_classes", True), "'num_classes'", "must be a whole number, not true"),
        (_set("arch", 7), "'arch'", "must be a string"),
        (_set("input_shape", 5), "'input_shape'", "must be a list, not the number 5"),
        (_set("input_shape", [1, "8", 8]), "'input_shape[1]'", "must be a whole number"),
        (_set("input_shape", [8, 8]), "'input_shape'", "must be [channels, height, width]"),
        (_set("arch_kwargs", [1]), "'arch_kwargs'", "must be an object, not a list"),
        (_set("arch_kwargs", "in_channels", {"a": 1}), "'arch_kwargs.in_channels'", "not an object"),
        (_set("pruning", "x"), "'pruning'", "must be an object, not the string 'x'"),
        (_set("pruning", "groups", {"a": 1}), "'pruning.groups'", "must be a list"),
        (_set("pruning", "groups", [3]), "'pruning.groups[0]'", "must be a string"),
        (_set("pruning", "units", {"features.0": "32"}), "'pruning.units.features.0'", "must be a whole number"),
        (_set("pruning", "kept", {"features.0": "all"}), "'pruning.kept.features.0'", "must be a list"),
        (_set("pruning", "kept", {"features.0": [0, None]}), "'pruning.kept.features.0[1]'", "must be a whole number"),
        (_set("settings", []), "'settings'", "must be an object"),
        (_set("settings", "ordering", ["zca"]), "'settings.ordering'", "must be a string"),
        (_set("settings", "threshold", "high"), "'settings.threshold'", "must be a finite number"),
        (_set("metrics", 3), "'metrics'", "must be an object"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_field_of_the_wrong_type_is_refused(capsys, export, tmp_path, change, field, problem):
    path = _forged(export, tmp_path, change)
    line = _refused_in_one_line(capsys, path, f"invalid snp metadata: {field} ")
    assert problem in line


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (_set("num_classes", 10**12), "'num_classes' is 1000000000000; snp accepts at most 100,000 classes"),
        (_set("arch_kwargs", "num_classes", 10**12), "'arch_kwargs.num_classes' is 1000000000000"),
        (_set("num_classes", 0), "'num_classes' is 0; it must be at least 1"),
        (_set("num_classes", int("9" * 4000)), "is 9999"),
        (_set("arch_kwargs", "in_channels", 10**15), "'arch_kwargs.in_channels' is 1000000000000000"),
        (_set("input_shape", [1, 10**6, 10**6]), "'input_shape[1]' is 1000000"),
        (_set("input_shape", [4096, 4096, 4096]), "'input_shape' [4096, 4096, 4096] has 68,719,476,736 values"),
        (_set("pruning", {"groups": ["features.0"], "units": {"features.0": 10**12}}), "'pruning.units.features.0'"),
        (_set("pruning", {"kept": {"features.0": [10**12]}}), "'pruning.kept.features.0[0]' is 1000000000000"),
    ],
    ids=["classes", "kwargs-classes", "no-classes", "4000-digits", "channels", "side", "values", "units", "kept"],
)
def test_an_absurd_size_is_refused(capsys, export, tmp_path, change, pattern):
    path = _forged(export, tmp_path, change)
    _refused_in_one_line(capsys, path, pattern)


def test_constructor_arguments_for_a_gigantic_network_are_refused_before_allocating(capsys, export, tmp_path):
    """Each argument is small enough alone; together they describe ~10¹³ parameters."""
    change = _set("arch_kwargs", {"num_classes": 10, "in_channels": 1, "widths": [1 << 20, 1 << 20, 1 << 20]})

    def as_resnet(header):
        header["arch"] = "demo-resnet"
        change(header)

    path = _forged(export, tmp_path, as_resnet)
    _refused_in_one_line(capsys, path, "parameters; snp builds at most 1,000,000,000")


@pytest.mark.parametrize(
    ("metadata", "pattern"),
    [
        ({"snp": "{not json"}, "the snp metadata is not valid JSON"),
        ({"snp": "[1, 2]"}, "the snp metadata is not a JSON object but a list"),
        ({"snp": '"text"'}, "not a JSON object but the string 'text'"),
        ({"snp": "1" * 5000}, "the snp metadata is not valid JSON"),
        ({"snp_format": "9" * 5000}, "unreadable snp format version '9999"),
        ({"snp_format": "1" + "0" * 200}, "written by a newer snp"),
    ],
    ids=["invalid", "list", "string", "huge-number", "format-digits", "format-huge"],
)
def test_a_malformed_document_is_refused(capsys, export, tmp_path, metadata, pattern):
    path = _forged(export, tmp_path, None, **metadata)
    _refused_in_one_line(capsys, path, pattern)


def test_missing_fields_are_named(capsys, export, tmp_path):
    path = _forged(export, tmp_path, lambda header: [header.pop(key) for key in ("arch", "input_shape")])
    _refused_in_one_line(capsys, path, "incomplete snp metadata (no arch, input_shape)")


def test_null_settings_and_metrics_load_as_empty(export, tmp_path):
    def nulls(header):
        header["settings"] = header["metrics"] = header["pruning"] = header["arch_kwargs"] = None

    loaded = io.load_exported(_forged(export, tmp_path, nulls))
    assert loaded.metadata["settings"] == {} and loaded.metadata["metrics"] == {}
    assert loaded.num_classes == 10 and loaded.input_shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("header", "pattern"),
    [
        ('{"__metadata__":{"snp_format":"1"},"x":' + "[" * 5000 + "]" * 5000 + "}", "recursion limit"),
        ('{"__metadata__":{"snp_format":1,"snp":"{}"}}', "expected a string"),
        ('{"__metadata__":{"snp_format":"1","snp":{"arch":"demo-vgg"}}}', "expected a string"),
        ('{"w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4]}}', "invalid shape"),
    ],
    ids=["nested", "number", "object", "huge-tensor"],
)
def test_a_crafted_safetensors_header_is_refused(capsys, tmp_path, header, pattern):
    """The safetensors layer itself (its JSON, not snp's) is checked by the safetensors reader."""
    raw = header.encode()
    path = tmp_path / "raw.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    line = _refused_in_one_line(capsys, path, "not a readable safetensors file")
    assert pattern in line  # the reader's own words, in parentheses


# ----------------------------------------------------------------------------------------------
# The library, and statistics files


@pytest.mark.parametrize("shape", [(1, 8, 10_000), (8, 8), (4096, 4096, 4096)], ids=["side", "dims", "values"])
def test_export_refuses_an_input_shape_it_could_not_load(tmp_path, shape):
    with pytest.raises(SnpError, match="cannot export a model for inputs of shape"):
        io.export_model(
            demo_model("demo-vgg"), tmp_path / "m.safetensors", arch="demo-vgg", num_classes=10, input_shape=shape
        )
    assert list(tmp_path.iterdir()) == []


def test_read_metadata_refuses_deep_nesting_without_recursion(export, tmp_path):
    path = _forged(export, tmp_path, None, snp=NESTED_TEXT)
    with pytest.raises(ModelLoadError, match="nested too deeply"):
        io.read_metadata(path)


def test_json_depth_counts_without_recursion():
    assert json_depth(1) == 0 and json_depth([]) == 1 and json_depth({"a": [{"b": 2}]}) == 3
    assert json_depth(_nest(100_000)) == MAX_JSON_DEPTH + 1  # stops just past the limit


def _forged_statistics(statistics, tmp_path, change=None, tensors=None, **metadata):
    from safetensors import safe_open

    if change is not None:
        with safe_open(str(statistics), framework="pt") as handle:
            header = json.loads(handle.metadata()["snp"])
        change(header)
        metadata.setdefault("snp", json.dumps(header))
    return rewrite_safetensors(statistics, tmp_path / "forged.stats.safetensors", tensors=tensors, **metadata)


@pytest.mark.parametrize(
    ("change", "tensors", "metadata", "pattern"),
    [
        (None, None, {"snp": NESTED_TEXT}, "the statistics header is nested too deeply"),
        (_set("info", _nest(200)), None, {}, "nested too deeply"),
        (_set("groups", 0, "units", 10**12), None, {}, "'groups[0].units' is 1000000000000"),
        (_set("groups", 0, "units", "32"), None, {}, "'groups[0].units' must be a whole number"),
        (_set("groups", 0, "layout", "spiral"), None, {}, "'groups[0].layout' is 'spiral'"),
        (_set("groups", {}), None, {}, "'groups' must be a list"),
        (_set("input_shape", 3), None, {}, "'input_shape' must be a list"),
        (_set("seed", -1), None, {}, "'seed' is -1"),
        (_set("info", [1]), None, {}, "'info' must be an object"),
        (_set("costs", "layers", 0, "in_groups", ["nowhere"]), None, {}, "no unit count in costs.units"),
        (_set("costs", "layers", 1, "channel_width", 1), None, {}, "'costs.layers[1].channel_width' is smaller"),
        (_set("groups", 0, "width", 2), None, {}, "'groups[0].width' is 2, fewer channels"),
        (_set("costs", "layers", 0, "macs", "many"), None, {}, "'costs.layers[0].macs' must be a finite number"),
        (None, {"group.0.metric": torch.zeros(3, 3, dtype=torch.float64)}, {}, "'group.0.metric' has shape (3, 3)"),
        (None, {"group.0.outer": torch.full((32, 32), float("nan"))}, {}, "'group.0.outer' must hold finite"),
    ],
    ids=[
        "nested",
        "nested-info",
        "units",
        "units-type",
        "layout",
        "groups-type",
        "shape-type",
        "seed",
        "info",
        "cost-group",
        "cost-width",
        "reader-width",
        "macs",
        "tensor-shape",
        "nan",
    ],
)
def test_crafted_statistics_files_are_refused(statistics, tmp_path, change, tensors, metadata, pattern):
    path = _forged_statistics(statistics, tmp_path, change, tensors, **metadata)
    with pytest.raises(SnpError) as info:
        io.load_analysis(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 400, message
    assert pattern in message, message


def test_statistics_round_trip_is_unchanged_by_the_checks(statistics):
    from snp_engine import api

    loaded = io.load_analysis(statistics)
    assert isinstance(loaded, api.Analysis) and loaded.units["features.0"] == 32
    assert loaded.plan(variance=0.9).keep == api.Analysis.load(statistics).plan(variance=0.9).keep
