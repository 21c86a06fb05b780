"""Property-based tests: random (often singular) covariances through every ordering and curve, and
random bytes and arrays through every loader. Bounded so that the whole file runs in seconds."""

from __future__ import annotations

import io as stdlib_io
import json
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snp_engine import io
from snp_engine.compensation import one_shot_reconstruction
from snp_engine.data import load_data
from snp_engine.errors import SnpError
from snp_engine.models import load_model
from snp_engine.ratios import keep_for_budget, keep_for_threshold, validate_keep
from snp_engine.subspace import (
    ORDERINGS,
    OrderingInputs,
    explained_curve,
    order_units,
    residual_variances,
    ridge_for,
    subspace_curve,
)
from tests.engine.helpers import is_permutation

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOADERS_SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


# ----------------------------------------------------------------------------------------------
# Covariances


@st.composite
def covariances(draw) -> torch.Tensor:
    """Low rank plus optional noise, with dead and duplicated units and scales from 1e-12 to 1e12."""
    n = draw(st.integers(1, 12))
    rank = draw(st.integers(0, n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    factor = rng.standard_normal((n, rank)) * 10.0 ** rng.uniform(-3, 3, (n, 1))
    cov = factor @ factor.T
    noise = draw(st.sampled_from([0.0, 1e-12, 1e-6, 1.0]))
    cov += noise * np.eye(n)
    if n > 1 and draw(st.booleans()):  # a dead unit
        dead = draw(st.integers(0, n - 1))
        cov[dead, :] = cov[:, dead] = 0.0
    if n > 2 and draw(st.booleans()):  # an exact duplicate of another unit
        a, b = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
        cov[b, :], cov[:, b] = cov[a, :], cov[:, a]
        cov[b, b] = cov[a, a]
    scale = 10.0 ** draw(st.integers(-12, 12))
    return torch.from_numpy((cov + cov.T) / 2 * scale)


def _inputs(cov: torch.Tensor, seed: int) -> OrderingInputs:
    n = cov.shape[0]
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((3, n))
    return OrderingInputs(cov, torch.from_numpy(w.T @ w), torch.from_numpy(np.abs(rng.standard_normal(n))), seed)


def _assert_curve(curve: torch.Tensor, n: int) -> None:
    values = curve.numpy()
    assert values.shape == (n + 1,) and np.isfinite(values).all()
    assert values[0] == 0 and abs(values[-1] - 1) < 1e-9
    assert values.min() >= 0 and values.max() <= 1
    assert np.all(np.diff(values) >= -1e-12), values


@FAST
@given(cov=covariances(), seed=st.integers(0, 1000))
def test_every_ordering_gives_a_permutation_and_valid_curves(cov, seed):
    n = cov.shape[0]
    inputs = _inputs(cov, seed)
    for name in ORDERINGS:
        order = order_units(name, inputs)
        assert is_permutation(order, n), (name, order)
        _assert_curve(explained_curve(cov, order), n)
        _assert_curve(explained_curve(cov, order, inputs.metric), n)
        _assert_curve(subspace_curve(cov, order), n)
        residual = residual_variances(cov, order)
        assert torch.isfinite(residual).all() and (residual >= 0).all()


@FAST
@given(cov=covariances(), seed=st.integers(0, 1000))
def test_random_orderings_give_valid_curves(cov, seed):
    n = cov.shape[0]
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    _assert_curve(explained_curve(cov, order), n)
    _assert_curve(subspace_curve(cov, order), n)
    assert (residual_variances(cov, order) >= 0).all()


@FAST
@given(cov=covariances(), threshold=st.floats(0, 1), round_to=st.integers(1, 8), seed=st.integers(0, 1000))
def test_keep_for_threshold_stays_in_range(cov, threshold, round_to, seed):
    n = cov.shape[0]
    curve = explained_curve(cov, order_units("greedy", _inputs(cov, seed))).numpy()
    k = keep_for_threshold({"g": curve}, threshold, round_to=round_to)["g"]
    assert 1 <= k <= n
    assert curve[k] >= threshold - 1e-9  # rounding up only adds explained variance


@FAST
@given(
    units=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    keep=st.lists(st.integers(-3, 45), min_size=1, max_size=5),
    fraction=st.floats(0, 1),
    seed=st.integers(0, 1000),
)
def test_random_keep_counts_and_budgets(units, keep, fraction, seed):
    names = [f"layer{i}" for i in range(len(units))]
    sizes = dict(zip(names, units, strict=False))
    counts = dict(zip(names, keep, strict=False))
    try:
        checked = validate_keep(counts, sizes)
    except ValueError as exc:
        assert "out of range" in str(exc)
    else:
        assert all(1 <= checked[name] <= sizes[name] for name in checked)
    rng = np.random.default_rng(seed)
    curves = {}
    for name, n in sizes.items():
        gains = rng.random(n) + 1e-3
        curves[name] = np.concatenate([[0.0], np.cumsum(gains) / gains.sum()])
    weights = {name: float(rng.uniform(0.5, 5)) for name in names}

    def cost(k):
        return sum(weights[name] * k[name] for name in names)

    target = cost(sizes) * fraction
    try:
        chosen, _ = keep_for_budget(curves, cost, target)
    except ValueError as exc:
        assert "not reachable" in str(exc)
        assert cost(dict.fromkeys(names, 1)) > target
    else:
        assert cost(chosen) <= target + 1e-9 and all(1 <= chosen[name] <= sizes[name] for name in names)


@FAST
@given(
    parents=st.integers(1, 6),
    children=st.integers(1, 3),
    others=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_one_shot_reconstruction_is_exact_for_dependent_units(parents, children, others, seed):
    """Units that are exact linear combinations of kept units are rebuilt from them exactly."""
    rng = np.random.default_rng(seed)
    samples = 8 * (parents + others) + 20
    kept_units = rng.standard_normal((samples, parents + others)) * rng.uniform(0.1, 10, parents + others)
    kept_units += rng.standard_normal(parents + others) * 5  # non-zero means
    mixing = rng.standard_normal((parents, children))
    dependent = kept_units[:, :parents] @ mixing + rng.standard_normal(children)
    x = np.concatenate([kept_units, dependent], axis=1)
    cov = torch.from_numpy(np.cov(x, rowvar=False, bias=True).reshape(x.shape[1], x.shape[1]))
    mean = torch.from_numpy(x.mean(0))
    kept = torch.arange(parents + others)
    mapping, offset = one_shot_reconstruction(cov, mean, kept, ridge_for(cov, relative=1e-12))
    rebuilt = torch.from_numpy(x[:, : parents + others]) @ mapping.T + offset
    truth = torch.from_numpy(x)
    centred = truth - truth.mean(0)
    error = (rebuilt - truth).norm(dim=0) / centred.norm(dim=0)
    assert float(error.max()) < 1e-6, error


# ----------------------------------------------------------------------------------------------
# Loaders: anything on disk ends in SnpError, never in another exception


def _prefixed_bytes():
    """Random bytes, some of them dressed up with the magic numbers of real formats."""
    header = st.binary(max_size=64).map(lambda b: struct.pack("<Q", len(b)) + b)
    json_header = st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3).map(
        lambda d: (lambda raw: struct.pack("<Q", len(raw)) + raw)(json.dumps({"__metadata__": d}).encode())
    )
    prefix = st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x05", b"\x93NUMPY", b"{"])
    return st.one_of(
        st.tuples(prefix, st.binary(max_size=512)).map(lambda t: t[0] + t[1]),
        st.tuples(header, st.binary(max_size=256)).map(lambda t: t[0] + t[1]),
        st.tuples(json_header, st.binary(max_size=64)).map(lambda t: t[0] + t[1]),
        st.binary(max_size=64).map(_zip_with),
    )


def _zip_with(content: bytes) -> bytes:
    """A well-formed zip archive (what torch.save and numpy.savez write) with random members."""
    buffer = stdlib_io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", content)
        archive.writestr("x.npy", content[::-1])
    return buffer.getvalue()


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch, on random "pickles"
@LOADERS_SETTINGS
@given(content=_prefixed_bytes(), suffix=st.sampled_from([".pth", ".safetensors", ".pt", ".npz"]))
def test_random_files_raise_only_snp_errors(scratch, content, suffix):
    path = scratch / f"candidate{suffix}"
    path.write_bytes(content)
    for load in (
        lambda: load_model(str(path)),
        lambda: load_model(f"torchvision:alexnet@{path}"),
        lambda: io.load_exported(path),
        lambda: io.load_analysis(path),
        lambda: load_data(f"npz:{path}"),
    ):
        try:
            load()
        except SnpError as exc:
            assert str(exc)
    # The full unpickler is refused without trust, so random bytes can never get that far.


_DTYPES = [np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_, np.complex64]


@st.composite
def npz_contents(draw) -> dict[str, np.ndarray]:
    keys = draw(st.sets(st.sampled_from(["x", "y", "x_train", "y_train", "x_test", "y_test", "other"]), max_size=5))
    arrays = {}
    for key in keys:
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=5)))
        dtype = draw(st.sampled_from(_DTYPES))
        values = np.random.default_rng(draw(st.integers(0, 1000))).standard_normal(shape) * 3
        if draw(st.booleans()):
            values.flat[:1] = draw(st.sampled_from([np.nan, np.inf, -1.0, 1e30]))
        with np.errstate(invalid="ignore", over="ignore"):
            arrays[key] = values.astype(dtype)
    return arrays


@LOADERS_SETTINGS
@given(arrays=npz_contents())
def test_random_npz_contents_raise_only_data_errors(scratch, arrays):
    path = scratch / "fuzz.npz"
    np.savez(path, **arrays)
    try:
        bundle = load_data(f"npz:{path}")
    except SnpError as exc:
        assert "fuzz.npz" in str(exc)
        return
    assert len(bundle.calibration) >= 1 and len(bundle.test) >= 1
    image, label = bundle.test[0]
    assert image.dtype == torch.float32 and torch.isfinite(image).all() and 0 <= label < bundle.num_classes


@pytest.fixture(scope="module")
def export_header(scratch) -> tuple[Path, dict]:
    loaded = load_model("demo-vgg")
    path = io.export_model(
        loaded.model, scratch / "base.safetensors", arch=loaded.arch, num_classes=10, input_shape=(1, 8, 8)
    )
    return path, io.read_metadata(path)


def _json_values():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=False), st.text(max_size=6))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
        max_leaves=6,
    )


@LOADERS_SETTINGS
@given(
    key=st.sampled_from(["arch", "arch_kwargs", "num_classes", "input_shape", "pruning", "settings", "format"]),
    inner=st.sampled_from([None, "groups", "units", "kept", "num_classes", "in_channels"]),
    value=_json_values(),
)
def test_damaged_export_headers_raise_only_snp_errors(scratch, export_header, key, inner, value):
    from safetensors import safe_open
    from safetensors.torch import save_file

    source, header = export_header
    header = json.loads(json.dumps(header))
    if inner is not None and isinstance(header.get(key), dict):
        header[key][inner] = value
    else:
        header[key] = value
    with safe_open(str(source), framework="pt") as handle:
        metadata = {**handle.metadata(), "snp": json.dumps(header)}
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    path = scratch / "damaged.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    try:
        loaded = io.load_exported(path)
    except SnpError as exc:
        assert str(path) in str(exc)
    else:
        assert isinstance(loaded.model, torch.nn.Module)
