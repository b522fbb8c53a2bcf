"""The cost of turning logits into class maps at the images' size, two ways, side by side.

For every image of a folder the model's logits (at its input size) are computed once; then, on
the same logits:

1. ``full resize``: every class plane resized bilinearly to the image's size, then the first
   maximal class (``resize_logits(...).max(1)``, what segcl did before);
2. ``border only``: :func:`segcl.engine.inference.masks_from_logits` (on the CPU:
   :func:`~segcl.engine.inference.upsampled_argmax`, which interpolates only where the four
   source pixels disagree).

Prints the CPU milliseconds per image of each (process CPU time, so that other jobs on the
machine disturb it little; one torch thread unless ``--threads``), their ratio, the share of
pixels the second interpolated, and how many pixels of the two class maps differ.

Example (CamVid val, a CamVid checkpoint at 96x128):

    python scripts/bench_classmap.py RUN ../shared/data/camvid/val/images
"""

from __future__ import annotations

import argparse
import time

import torch

from segcl.data import find_images, read_image, to_tensor_batch
from segcl.engine.checkpoint import load_model
from segcl.engine.inference import (
    border_cells,
    input_transform,
    masks_from_logits,
    resize_logits,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Example" + __doc__.split("Example", 1)[1])
    parser.add_argument("model", help="run directory / checkpoint / hf:// reference")
    parser.add_argument("images", help="folder of images")
    parser.add_argument("--limit", type=int, default=0, help="use the first N images (0: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the logits")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, config = load_model(args.model, torch.device("cpu"))
    transform = input_transform(config)
    files = [f for f, _ in find_images([args.images])]
    files = files[: args.limit] if args.limit else files
    batches: list[tuple[torch.Tensor, tuple[int, int]]] = []
    with torch.inference_mode():
        for i in range(0, len(files), args.batch_size):
            images = [read_image(f) for f in files[i : i + args.batch_size]]
            shapes = {im.shape[:2] for im in images}
            for shape in shapes:  # one batch per image size
                group = [transform.resize(im) for im in images if im.shape[:2] == shape]
                x = to_tensor_batch(group, config.data.mean, config.data.std)
                batches.append((model(x), shape))

    def full(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return resize_logits(logits, size).max(1).indices.to(torch.uint8)

    def cpu_ms(fn) -> float:
        fn(*batches[0])  # warm-up
        start = time.process_time()
        for _ in range(args.repeats):
            for logits, size in batches:
                fn(logits, size)
        return 1000 * (time.process_time() - start) / args.repeats / len(files)

    with torch.inference_mode():
        old, new = cpu_ms(full), cpu_ms(masks_from_logits)
        differ = total = border = 0
        for logits, size in batches:
            a, b = full(logits, size), masks_from_logits(logits, size)
            differ += int((a != b).sum())
            total += a.numel()
            border += int(border_cells(logits.max(1).indices).sum())
        cells = sum(lg.shape[0] * lg.shape[-2] * lg.shape[-1] for lg, _ in batches)
    print(f"{len(files)} images, logits {tuple(batches[0][0].shape[-2:])} -> "
          f"{batches[0][1]}, {torch.get_num_threads()} torch thread(s), CPU ms per image")
    print(f"  full resize   {old:8.2f}")
    print(f"  border only   {new:8.2f}   ({old / new:.2f}x faster)")
    print(f"  source cells with more than one class (interpolated): {100 * border / cells:.1f}%")
    print(f"  class-map pixels that differ: {differ} of {total}")


if __name__ == "__main__":
    main()
