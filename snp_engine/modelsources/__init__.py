"""Model sources: each module registers one kind of model (a new kind is one new module here).

The first registered source that recognises a spec loads it: demo networks, torchvision
classifiers, timm models (timm is optional), snp exports, then any other file (pickled or
TorchScript, with ``trust``).
"""

from snp_engine.modelsources import demo, snp_file, timm_zoo, torchvision_zoo, trusted  # noqa: F401  (registration, in order)
from snp_engine.modelsources.base import MODEL_SOURCES, ModelSource, find_source, register

__all__ = ["MODEL_SOURCES", "ModelSource", "find_source", "register"]
