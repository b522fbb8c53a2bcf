"""segcl: label-efficient semantic segmentation with contrastive pre-training.

The public API (imported lazily, so ``segcl --help`` stays fast)::

    import segcl
    model = segcl.create_model("resnet18", "unet", num_classes=11)
    segcl.finetune(segcl.FinetuneConfig(...))
    metrics = segcl.evaluate("runs/camvid", "data/camvid")
    segcl.predict("runs/camvid", ["photos/"], "masks/")
    segcl.predict("runs/camvid", ["photos/"], "masks/", tta="flip", save_probs=True, color=True)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "create_model": "segcl.models",
    "SegmentationModel": "segcl.models",
    "ModelConfig": "segcl.models",
    "DataConfig": "segcl.config",
    "OptimConfig": "segcl.config",
    "ContrastConfig": "segcl.config",
    "LossConfig": "segcl.config",
    "FinetuneConfig": "segcl.config",
    "PretrainConfig": "segcl.config",
    "TTAConfig": "segcl.config",
    "ExportConfig": "segcl.config",
    "finetune": "segcl.engine.finetune",
    "pretrain": "segcl.engine.pretrain",
    "evaluate": "segcl.engine.evaluate",
    "predict": "segcl.engine.predict",
    "export": "segcl.engine.export",
    "load_model": "segcl.engine.checkpoint",
    "make_synthetic_dataset": "segcl.data.synthetic",
    "SegclError": "segcl.errors",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'segcl' has no attribute {name!r}")
