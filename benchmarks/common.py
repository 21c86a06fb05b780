"""Shared plumbing for the benchmark scripts: machine facts, data, models, timing, memory, JSON.

Every benchmark writes one JSON file whose ``machine`` entry says where the numbers come from, so
a result is never separated from the CPU/GPU, thread count and library versions that produced it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as ``python benchmarks/x.py`` from anywhere
    sys.path.insert(0, str(ROOT))

from snp_engine.data import adapt_to_model, load_data  # noqa: E402
from snp_engine.models import load_model  # noqa: E402

RESULTS_DIR = ROOT / "docs" / "benchmarks"
PLOTS_DIR = ROOT / "docs"
CACHE_DIR = Path(__file__).resolve().parent / ".cache"

# "resnet18-32": torchvision's resnet18 trained here on the digits upscaled to 3x32x32.
TRAINED_RESNET = "resnet18-32"
MODELS = ("demo-vgg", "demo-resnet", TRAINED_RESNET)
RESNET_EPOCHS = 15
RESNET_LR = 0.05
RESNET_SEED = 0
# "vgg11_bn-32": torchvision's vgg11_bn (4,096-wide classifier layers) trained the same way.
TRAINED_VGG = "vgg11_bn-32"
VGG_EPOCHS = 25
VGG_LR = 0.02


# ----------------------------------------------------------------------------------------------
# Machine and output


def set_threads(threads: int) -> None:
    torch.set_num_threads(max(1, threads))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str = "cpu") -> dict:
    """What produced the numbers: CPU, usable cores, torch threads, library versions, GPU."""
    import torch_pruning

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cpu": cpu_model(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_pruning": getattr(torch_pruning, "__version__", "unknown"),
        "python": platform.python_version(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        # other work on the machine (1-minute load average at the start): timings are only as quiet as this
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "git": git_state(),
    }
    return info


def git_state() -> dict:
    """The commit the engine code came from, and engine files that differed from it at the start."""
    import subprocess

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
            return done.stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "snp_engine").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD"), "engine_changes": changed}


def _check_finite(value, where: str = "") -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite number in results at {where or '<root>'}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_finite(item, f"{where}[{index}]")


def write_json(path: Path, data: dict) -> Path:
    """Write results atomically; NaN/inf are refused so every file is strict JSON."""
    _check_finite(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def mean_std(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min, max and the raw values."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Timing and memory


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(
    fn: Callable[[], object],
    *,
    device: str = "cpu",
    warmup: int = 1,
    min_reps: int = 3,
    min_seconds: float = 1.0,
    max_reps: int = 200,
) -> dict:
    """Median/min/mean seconds of ``fn`` over at least ``min_reps`` calls and ``min_seconds`` total."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_seconds and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "mean": statistics.fmean(times), "reps": len(times)}


def alternating_rounds(
    calls: dict[str, Callable[[], object]],
    *,
    device: str = "cpu",
    rounds: int = 5,
    min_seconds: float = 1.0,
    warmup: int = 1,
) -> dict[str, dict]:
    """Seconds per call of every entry of ``calls``, timed in alternating rounds (a, b, …, a, b, …) so
    that a change in the machine's load hits all of them alike. Each gets ``warmup`` untimed calls,
    then per round at least one call and ``min_seconds / rounds`` seconds. Reported: ``seconds``, the
    median over rounds of each round's median; ``min_seconds``, the fastest single call; ``rounds``."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    per_round: dict[str, list[float]] = {name: [] for name in calls}
    best = {name: float("inf") for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            timing = time_call(fn, device=device, warmup=0, min_reps=1, min_seconds=min_seconds / rounds)
            per_round[name].append(timing["median"])
            best[name] = min(best[name], timing["min"])
    return {
        name: {"seconds": statistics.median(values), "min_seconds": best[name], "rounds": values}
        for name, values in per_round.items()
    }


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: fall back to the high-water mark (only grows)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def peak_memory(device: str = "cpu", interval: float = 0.002) -> Iterator[dict]:
    """Peak extra memory of the block: resident set size sampled every ``interval`` seconds on CPU
    (torch's allocations are invisible to tracemalloc), ``torch.cuda.max_memory_allocated`` on GPU.

    Yields a dict that holds ``peak_bytes`` after the block."""
    result: dict = {}
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        yield result
        torch.cuda.synchronize()
        result["peak_bytes"] = int(torch.cuda.max_memory_allocated() - base)
        result["kind"] = "cuda max_memory_allocated"
        return
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            stop.wait(interval)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        result["peak_bytes"] = int(peak[0] - base)
        result["kind"] = "process RSS above the level before the call (sampled)"


# ----------------------------------------------------------------------------------------------
# Data


def materialise(dataset: Dataset) -> TensorDataset:
    """All (image, label) pairs of ``dataset`` as two tensors, so resizing happens once."""
    loader = DataLoader(dataset, batch_size=256, shuffle=False)
    images, labels = zip(*loader, strict=True)
    return TensorDataset(torch.cat(images), torch.cat(labels))


def digits_for(model_name: str) -> dict[str, TensorDataset]:
    """train / calibration / test splits of the digits, shaped for ``model_name`` (1x8x8 for the demo
    networks, 3x32x32 for torchvision ones), plus ``pool`` = train + calibration."""
    bundle = load_data("digits")
    if not model_name.startswith("demo-"):
        bundle = adapt_to_model(bundle, 3, (32, 32))
    splits = {name: materialise(getattr(bundle, name)) for name in ("train", "calibration", "test")}
    splits["pool"] = materialise(ConcatDataset([splits["train"], splits["calibration"]]))
    return splits


def random_subset(dataset: TensorDataset, samples: int, seed: int) -> TensorDataset:
    """``samples`` images drawn without replacement with a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(dataset), generator=gen)[:samples]
    return TensorDataset(*(t[index] for t in dataset.tensors))


# ----------------------------------------------------------------------------------------------
# Models


def _trained_torchvision(
    arch: str,
    splits: dict[str, TensorDataset],
    *,
    epochs: int,
    lr: float,
    device: str = "cpu",
    kwargs: dict | None = None,
    optimizer: str = "sgd",
    prepare: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """torchvision ``arch`` (10 classes, constructor ``kwargs``, then ``prepare(model)`` before
    training, e.g. an initialisation) trained on the 3x32x32 digits train split with ``optimizer``
    (``sgd`` or ``adamw``); cached on disk."""
    import torchvision
    from safetensors.torch import load_file, save_file

    from snp_engine.training import train

    tag = "" if optimizer == "sgd" else f"_{optimizer}"
    path = CACHE_DIR / f"{arch}_digits32_e{epochs}_s{RESNET_SEED}{tag}.safetensors"
    torch.manual_seed(RESNET_SEED)
    model = getattr(torchvision.models, arch)(num_classes=10, **(kwargs or {}))
    if prepare is not None:
        prepare(model)
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    log(f"training {arch} on 3x32x32 digits for {epochs} epochs (cached afterwards in {path})")
    loader = DataLoader(
        splits["train"], batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(RESNET_SEED)
    )
    train(model, loader, epochs=epochs, lr=lr, device=device, label_smoothing=0.1, optimizer=optimizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.cpu().eval()


def trained_resnet18(
    splits: dict[str, TensorDataset], *, epochs: int = RESNET_EPOCHS, device: str = "cpu"
) -> nn.Module:
    """torchvision resnet18 (10 classes) trained on the 3x32x32 digits train split; cached on disk."""
    return _trained_torchvision("resnet18", splits, epochs=epochs, lr=RESNET_LR, device=device)


def trained_vgg11_bn(splits: dict[str, TensorDataset], *, epochs: int = VGG_EPOCHS, device: str = "cpu") -> nn.Module:
    """torchvision vgg11_bn (10 classes, dropout in the classifier as built) trained on the 3x32x32
    digits train split; cached on disk."""
    return _trained_torchvision("vgg11_bn", splits, epochs=epochs, lr=VGG_LR, device=device)


def benchmark_model(name: str, splits: dict[str, TensorDataset] | None = None, device: str = "cpu") -> nn.Module:
    """A trained model by benchmark name: the bundled demo networks or the digits-trained resnet18 / vgg11_bn."""
    if name == TRAINED_RESNET:
        return trained_resnet18(splits if splits is not None else digits_for(name), device=device)
    if name == TRAINED_VGG:
        return trained_vgg11_bn(splits if splits is not None else digits_for(name), device=device)
    return load_model(name).model


def classifier_of(model: nn.Module) -> nn.Module:
    """The last Linear layer (the network output, never pruned); the last conv where there is no
    Linear (SqueezeNet's classifier is a 1x1 conv)."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linear[-1] if linear else [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]


def example_input(dataset: TensorDataset, device: str = "cpu") -> torch.Tensor:
    return dataset.tensors[0][:1].to(device)


@torch.inference_mode()
def logits_of(model: nn.Module, images: torch.Tensor, device: str = "cpu", batch_size: int = 256) -> torch.Tensor:
    model = model.to(device).eval()
    return torch.cat(
        [model(images[i : i + batch_size].to(device)).double().cpu() for i in range(0, len(images), batch_size)]
    )


def score(model: nn.Module, test: TensorDataset, dense_logits: torch.Tensor, device: str = "cpu") -> dict:
    """Test top-1 (%) and relative logit error ‖f̃ − f‖ / ‖f‖ against the dense logits, in one pass."""
    images, labels = test.tensors
    logits = logits_of(model, images, device)
    top1 = 100.0 * float((logits.argmax(1) == labels).double().mean())
    error = float(((logits - dense_logits) ** 2).sum() / (dense_logits**2).sum()) ** 0.5
    return {"top1": top1, "fidelity": error}


def add_run_args(parser, plot: str | None = None) -> None:
    """The options every benchmark script shares: device, threads, output JSON, plot, quick mode."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    if plot is not None:
        parser.add_argument("--plot", type=Path, default=None, help=f"PNG path (default {plot}; none in --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke setting for the test suite")


def run_header(name: str, args, device: str = "cpu") -> dict:
    """The start of every results file: which benchmark, on what machine, with which settings."""
    return {
        "benchmark": name,
        "machine": machine_info(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }


def default_out(args, name: str) -> None:
    """``--out`` defaults to docs/benchmarks/NAME.json, or a cache folder for ``--quick`` runs."""
    if args.out is None:
        args.out = (CACHE_DIR / "quick" if args.quick else RESULTS_DIR) / f"{name}.json"
