"""Train the two bundled demo networks on the digits train split and record their test accuracy.

Reproducible by construction (fixed seeds, deterministic algorithms, CPU, 2 threads), so the
committed weights in ``resources/`` can be regenerated and the accuracies in
``resources/demo_models.json`` re-checked by the test suite. Run from the repository root:

    .venv/bin/python scripts/train_demo.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from snp_engine.data import DIGITS_MEAN, DIGITS_STD, load_data, make_loader
from snp_engine.models import DEMO_MODELS, RESOURCES, load_model
from snp_engine.progress import TextReporter
from snp_engine.training import accuracy, train

SEED = 0
EPOCHS = 60
BATCH_SIZE = 64
LR = 0.05
WEIGHT_DECAY = 5e-4
LABEL_SMOOTHING = 0.1
BACKGROUND = (0.0 - DIGITS_MEAN) / DIGITS_STD  # a blank pixel after normalisation


def random_shift(seed: int):
    """Batch augmentation: move each image by up to one pixel, filling with blank background.

    Digits are centred in their 8x8 box, so one-pixel shifts mimic real handwriting offsets without
    cutting strokes off. Uses its own generator so runs are repeatable.
    """
    generator = torch.Generator().manual_seed(seed)

    def shift(images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        padded = F.pad(images, (1, 1, 1, 1), value=BACKGROUND)
        offsets = torch.randint(0, 3, (n, 2), generator=generator)
        out = torch.empty_like(images)
        for i, (dy, dx) in enumerate(offsets.tolist()):
            out[i] = padded[i, :, dy : dy + h, dx : dx + w]
        return out

    return shift


def train_one(name: str, epochs: int) -> dict:
    """Train one demo model from a fixed seed, save its weights and return its record."""
    info = DEMO_MODELS[name]
    torch.manual_seed(SEED)
    model = info.builder()
    bundle = load_data("digits")
    train_loader = make_loader(bundle.train, BATCH_SIZE, shuffle=True, seed=SEED)
    history = train(
        model,
        train_loader,
        epochs=epochs,
        lr=LR,
        weight_decay=WEIGHT_DECAY,
        label_smoothing=LABEL_SMOOTHING,
        batch_transform=random_shift(SEED),
        reporter=TextReporter(),
    )
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(info.weights_path), metadata={"arch": name, "dataset": "digits"})
    # Measure the model as it will be used: reloaded from the saved file.
    reloaded = load_model(name).model
    test = accuracy(reloaded, make_loader(bundle.test, 256))
    calibration = accuracy(reloaded, make_loader(bundle.calibration, 256))
    return {
        "test_top1": round(test["top1"], 4),
        "test_top5": round(test["top5"], 4),
        "calibration_top1": round(calibration["top1"], 4),
        "train_acc_last_epoch": round(history[-1]["train_acc"], 4),
        "seed": SEED,
        "epochs": epochs,
        "parameters": sum(p.numel() for p in reloaded.parameters()),
        "torch": torch.__version__.split("+")[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--models", nargs="+", default=list(DEMO_MODELS), choices=list(DEMO_MODELS))
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    RESOURCES.mkdir(exist_ok=True)
    results_file = RESOURCES / "demo_models.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for name in args.models:
        start = time.perf_counter()
        results[name] = train_one(name, args.epochs)
        seconds = time.perf_counter() - start
        print(f"{name}: test top-1 {results[name]['test_top1']:.2f}% ({seconds:.0f} s)", file=sys.stderr)
    results_file.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
