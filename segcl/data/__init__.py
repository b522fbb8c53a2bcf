"""Datasets: layouts on disk, class descriptions, transforms, labelled subsets."""

from __future__ import annotations

from segcl.data.dataset import SegmentationDataset, load_pair, validate_samples
from segcl.data.info import CAMVID, CITYSCAPES, PET, VOC, DatasetInfo
from segcl.data.io import IMAGE_EXTENSIONS, find_images, read_image, read_mask, write_mask
from segcl.data.layouts import (
    CITYSCAPES_ID_TO_TRAINID,
    LAYOUTS,
    PET_TRIMAP_TO_LABEL,
    Sample,
    detect_layout,
    load_samples,
)
from segcl.data.subsets import labeled_subset
from segcl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColorDistortion,
    EvalTransform,
    PairTransform,
    TrainTransform,
    TwoViewTransform,
    WeakStrongTransform,
    to_tensor,
    to_tensor_batch,
)

__all__ = [
    "CAMVID",
    "CITYSCAPES",
    "CITYSCAPES_ID_TO_TRAINID",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "PET",
    "PET_TRIMAP_TO_LABEL",
    "VOC",
    "ColorDistortion",
    "DatasetInfo",
    "EvalTransform",
    "PairTransform",
    "Sample",
    "SegmentationDataset",
    "TrainTransform",
    "TwoViewTransform",
    "WeakStrongTransform",
    "detect_layout",
    "find_images",
    "labeled_subset",
    "load_pair",
    "load_samples",
    "read_image",
    "read_mask",
    "to_tensor",
    "to_tensor_batch",
    "validate_samples",
    "write_mask",
]
