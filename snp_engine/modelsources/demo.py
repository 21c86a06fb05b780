"""The bundled demo networks (``demo-vgg``, ``demo-resnet``), trained on the embedded digits."""

from __future__ import annotations

from snp_engine.architectures import DEMO_MODELS, DemoModel, LoadedModel
from snp_engine.errors import ModelLoadError
from snp_engine.modelsources.base import register
from snp_engine.modelsources.checkpoints import load_strict


def load_demo(info: DemoModel) -> LoadedModel:
    from safetensors.torch import load_file

    if not info.weights_path.is_file():
        raise ModelLoadError(f"weights for {info.name} are missing ({info.weights_path}); run scripts/train_demo.py")
    model = info.builder()
    load_strict(model, load_file(str(info.weights_path)), info.name, info.weights_path)
    return LoadedModel(
        model.eval(), info.name, info.name, info.num_classes, info.input_shape, str(info.weights_path), "recorded"
    )


class DemoSource:
    """The networks shipped in resources/ (their input size is the one they were trained at)."""

    name = "demo"
    syntax = " | ".join(DEMO_MODELS)
    summary = "a bundled demo network trained on the embedded digits"
    label = "Demo network"
    needs_trust = False
    rebuilds = "demo"

    def matches(self, spec: str) -> bool:
        return spec.strip() in DEMO_MODELS

    def load(self, spec: str, trust: bool) -> LoadedModel:
        return load_demo(DEMO_MODELS[spec.strip()])


register(DemoSource())
