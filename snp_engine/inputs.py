"""The input size and channels a model runs at on given data: one rule, in one place.

* ``--input-size`` (``input_size``) wins; a fixed-size model (ViT) refuses any other size.
* A fixed-size model, or one whose size is recorded (an snp export, a demo network), runs at that size.
* Any other model (torchvision CNNs, pickled or TorchScript modules) runs at the data's own size
  (npz arrays, a folder of same-sized images); if it cannot run that small, at the smallest
  doubling of it that works, and if no doubling works (a model that takes one size only), at the
  model's own size. A folder of mixed sizes counts as its most common size where that is smaller
  than the model's own (small images are not blown up to 224x224); else it runs at the model's.
* A pickled or TorchScript model's own size is 224x224 if it runs there, else the smallest
  common size it runs at (:func:`runnable_shape`).

Whatever is adapted (size, a grey channel repeated, and what the source changed while reading) is
said in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from snp_engine.datasources.base import DataBundle, adapt_to_model
from snp_engine.errors import SnpError, reason_of

Shape = tuple[int, int, int]
FIXED, RECORDED, ANY = "fixed", "recorded", "any"


@dataclass(frozen=True)
class FittedData:
    """Data adapted to a model's input, the shape chosen and the one-line note of what changed."""

    bundle: DataBundle
    shape: Shape
    note: str | None


def runs_at(model: nn.Module, shape: Shape) -> bool:
    """True when one zero image of ``shape`` passes through the model."""
    return forward_error(model, shape) is None


def forward_error(model: nn.Module, shape: Shape) -> str | None:
    """Why one zero image of ``shape`` does not pass through the model, in one line (``None``: it
    does). TorchScript puts its interpreter's traceback first, so the last line is the reason."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    try:
        with torch.inference_mode():
            model(torch.zeros((1, *shape), device=device, dtype=dtype))
    except Exception as exc:  # any failure means "not at this size"; the caller says so clearly
        return reason_of(exc)
    return None


def resolve_input_shape(
    model: nn.Module,
    model_shape: Shape,
    rule: str,
    data_size: tuple[int, int] | None,
    input_size: int | None = None,
    *,
    name: str = "the model",
    common_size: tuple[int, int] | None = None,
) -> tuple[Shape, str | None]:
    """The (C, H, W) to feed the model and, when it is not the data's own size, why.
    ``common_size``: the most common size of data of mixed sizes (``data_size`` None)."""
    channels, height, width = model_shape
    if input_size is not None:
        if rule == FIXED and input_size != height:
            raise SnpError(
                f"{name} only takes {height}x{width} inputs (a fixed input size); "
                f"--input-size {input_size} cannot be used with it"
            )
        shape = (channels, input_size, input_size)
        if not runs_at(model, shape) and (rule != ANY or runs_at(model, model_shape)):
            made = "was made for" if rule != ANY else "runs at"
            raise SnpError(
                f"the model cannot run on inputs of shape {shape}: {name} {made} {height}x{width} inputs; "
                "give another --input-size or none"
            )
        return shape, "--input-size"
    if rule == FIXED:
        return model_shape, "the model's fixed input size"
    if rule == RECORDED:
        return model_shape, "the input size the model was made for"
    mixed = data_size is None
    if mixed:
        if common_size is None or common_size[0] * common_size[1] >= height * width:
            return model_shape, "the images differ in size; the model's default size"
        data_size = common_size  # small images of a few sizes: the most common one, not 224x224
    size = data_size
    while not runs_at(model, (channels, *size)):
        size = (size[0] * 2, size[1] * 2)
        if size[0] > max(height, data_size[0]) or size[1] > max(width, data_size[1]):
            # no doubling runs: a model that takes only one size (a flatten into a linear layer)
            # runs at its own; one that runs at none of these is refused with the forward's reason
            if model_shape[1:] != data_size and runs_at(model, model_shape):
                return model_shape, f"the model cannot run on {_size(data_size)} images"
            shape = (channels, *data_size)
            raise SnpError(
                f"the model cannot run on inputs of shape {shape}, a doubling of it or {height}x{width}: give "
                f"--input-size S, the size {name} was trained at ({forward_error(model, shape)})"
            )
    if size != data_size:
        return (channels, *size), f"the model cannot run on {_size(data_size)} images"
    return (channels, *size), "the images differ in size; their most common size" if mixed else None


# Square sizes tried, smallest first, for a model that cannot run at the default 224x224 and does
# not say which size it takes (a plain nn.Sequential with a flatten into a linear layer).
PROBE_SIZES = (8, 16, 28, 32, 48, 56, 64, 96, 112, 128, 160, 192, 256, 299, 384, 512)


def runnable_shape(model: nn.Module, shape: Shape) -> Shape:
    """``shape`` when the model runs at it, else the first of :data:`PROBE_SIZES` it runs at
    (``shape`` again when it runs at none of them: the forward check then says why)."""
    if runs_at(model, shape):
        return shape
    for size in PROBE_SIZES:
        if size != shape[1] and runs_at(model, (shape[0], size, size)):
            return (shape[0], size, size)
    return shape


def fit_data(bundle: DataBundle, shape: Shape, reason: str | None) -> FittedData:
    """Adapt ``bundle`` to ``shape`` and describe the adaptation in one line (``None``: untouched)."""
    channels, height, width = shape
    changes = []
    if bundle.channels != channels:
        if bundle.retarget is not None and channels == 1:
            changes.append("converted to greyscale")
        else:
            changes.append(f"1 channel repeated to {channels} channels")
    if bundle.image_size != (height, width):
        before = _size(bundle.image_size) if bundle.image_size else "mixed sizes"
        changes.append(f"resized {before} -> {height}x{width}" + (f" ({reason})" if reason else ""))
    fitted = adapt_to_model(bundle, channels, (height, width))
    parts = list(fitted.adapted)  # what the source did for this shape (a folder decodes again)
    if changes:
        parts.append(f"images adapted to the model's {channels}x{height}x{width} input: " + ", ".join(changes))
    return FittedData(fitted, shape, f"{bundle.name}: " + "; ".join(parts) if parts else None)


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
