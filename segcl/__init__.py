"""segcl: label-efficient semantic segmentation with contrastive pre-training."""

from __future__ import annotations

__version__ = "0.1.0"
