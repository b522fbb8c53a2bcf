"""What decoding an image costs ``segcl predict``, and what a reduced-scale JPEG decode would
change.

libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 of its size in the DCT domain, for about half the
CPU time of a full decode. When the network input is much smaller than the image (CamVid:
480x360 -> 128x96) this looks like a free speed-up for prediction. This script measures both
sides on one model and one folder of images with masks:

1. CPU milliseconds per image (``time.thread_time``, best of 3, one thread, so the numbers hold
   on a busy machine): full decode, full decode + resize to the network input (what segcl does),
   reduced decode (1/2) + the same resize;
2. the masks predicted from both inputs: pixel agreement and mIoU against the ground truth.

The model was trained on inputs resized from full decodes, so the smoother reduced decode is a
shift of the input distribution; the mIoU says what it costs.

Example (a CamVid fine-tune, the 101 val images):

    python scripts/decode_cost.py runs/camvid-ce ../shared/data/camvid/val
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from segcl.data import find_images, read_image, read_mask, to_tensor_batch
from segcl.engine.checkpoint import load_model
from segcl.engine.inference import input_transform, masks_from_logits

_REDUCED_2 = (cv2.IMREAD_REDUCED_COLOR_2 & ~cv2.IMREAD_COLOR) | cv2.IMREAD_COLOR_RGB \
    | cv2.IMREAD_IGNORE_ORIENTATION


def cpu_ms(fn: Callable[[np.ndarray], object], blobs: list[np.ndarray]) -> float:
    """Best of 3 passes over ``blobs``: CPU milliseconds of this thread per call."""
    best = float("inf")
    for _ in range(3):
        start = time.thread_time()
        for b in blobs:
            fn(b)
        best = min(best, (time.thread_time() - start) / len(blobs) * 1e3)
    return best


def miou(conf: np.ndarray) -> float:
    inter = np.diag(conf)
    iou = inter / np.maximum(conf.sum(0) + conf.sum(1) - inter, 1)
    return 100 * float(iou[conf.sum(1) > 0].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Example" + __doc__.split("Example", 1)[1])
    parser.add_argument("model", help="run directory / checkpoint")
    parser.add_argument("split", help="a folder with images/ and masks/ (PNG, same stems)")
    parser.add_argument("--limit", type=int, default=101)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(0)

    model, config = load_model(args.model, torch.device("cpu"))
    model.eval()
    tf = input_transform(config, "resize")
    files = [f for f, _ in find_images([Path(args.split) / "images"])][: args.limit]
    blobs = [np.fromfile(f, np.uint8) for f in files]
    full_flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    h, w = config.data.image_size
    print(f"{len(files)} images, network input {h}x{w}, CPU ms per image (one thread):")
    print(f"  full decode              {cpu_ms(lambda b: cv2.imdecode(b, full_flags), blobs):.2f}")
    print(f"  full decode + resize     "
          f"{cpu_ms(lambda b: tf.resize(cv2.imdecode(b, full_flags)), blobs):.2f}")
    print(f"  reduced (1/2) + resize   "
          f"{cpu_ms(lambda b: tf.resize(cv2.imdecode(b, _REDUCED_2)), blobs):.2f}")

    c = len(config.data.classes)
    conf = {"full": np.zeros((c, c), np.int64), "reduced": np.zeros((c, c), np.int64)}
    agree = total = 0
    for f, blob in zip(files, blobs, strict=True):
        image = read_image(f)
        gt = read_mask(Path(args.split) / "masks" / f"{f.stem}.png").astype(np.int64)
        masks = {}
        with torch.inference_mode():
            for name, im in (("full", image), ("reduced", cv2.imdecode(blob, _REDUCED_2))):
                x = to_tensor_batch([tf.resize(im)], tf.mean, tf.std)
                masks[name] = masks_from_logits(model(x), image.shape[:2])[0].numpy()
                ok = gt < c
                conf[name] += np.bincount(gt[ok] * c + masks[name][ok],
                                          minlength=c * c).reshape(c, c)
        agree += int((masks["full"] == masks["reduced"]).sum())
        total += gt.size
    print(f"masks: pixel agreement {100 * agree / total:.2f}%; mIoU full decode "
          f"{miou(conf['full']):.2f}, reduced decode {miou(conf['reduced']):.2f}")


if __name__ == "__main__":
    main()
