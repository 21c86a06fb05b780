"""Shared pytest configuration.

* Qt runs headless: ``QT_QPA_PLATFORM=offscreen`` is set when this file is imported, before any
  test module can import Qt.
* Tests marked ``@pytest.mark.gpu`` are skipped cleanly on machines without CUDA; the
  ``cuda_device`` fixture gives such tests the device to use.
* torch runs single-threaded unless ``OMP_NUM_THREADS`` says otherwise: the tests use small
  tensors, and on a busy machine spinning OpenMP threads made them 5-20x slower. The variable is
  also inherited by the subprocesses some tests start.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

SKIP_WITHOUT_CUDA = "needs a CUDA device (torch.cuda.is_available() is False)"


def cuda_available() -> bool:
    """True when torch can use a CUDA device (torch is imported only when asked)."""
    import torch

    return bool(torch.cuda.is_available())


def pytest_configure(config):
    import sys

    if "torch" in sys.modules:  # imported before this file set OMP_NUM_THREADS: apply it now
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items or cuda_available():
        return
    skip = pytest.mark.skip(reason=SKIP_WITHOUT_CUDA)
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture
def cuda_device():
    """``torch.device("cuda")``, or a skip where no CUDA device is present."""
    if not cuda_available():
        pytest.skip(SKIP_WITHOUT_CUDA)
    import torch

    return torch.device("cuda")


@pytest.fixture(scope="session")
def vgg_export(tmp_path_factory):
    """demo-vgg written as an snp export (unpruned: the fastest valid export)."""
    from snp_engine import io
    from snp_engine.models import load_model

    loaded = load_model("demo-vgg")
    path = tmp_path_factory.mktemp("export") / "vgg.safetensors"
    return io.export_model(loaded.model, path, arch=loaded.arch, num_classes=10, input_shape=(1, 8, 8))
