"""Throughput of ``segcl predict``: end to end vs. the model alone vs. a plain sequential loop.

Measured side by side in one run, on the same images and the same model:

1. ``forward``: the model forward + the upsampling of the logits to each image's size + the
   class of each pixel (:func:`segcl.engine.inference.masks_from_logits`, the post-processing
   predict uses) on pre-loaded, pre-resized, normalised tensors -- the ceiling for any
   prediction pipeline;
2. ``segcl predict``: :func:`segcl.engine.predict.predict_files` end to end (decode, resize,
   normalise, forward, upsample, class map, write palette PNGs), decoding and writing
   overlapped with compute;
3. ``plain loop``: read one image, forward it, write its mask, next image;
4. ``forward, full resize``: row 1 with the post-processing before
   :func:`segcl.engine.inference.upsampled_argmax` (every class plane resized, then the
   maximum), to show what that change saves.

Each row gives images/s (wall clock, best of ``--repeats``), the ratio to ``forward``, and the
process's CPU time per image (all threads; on a machine shared with other jobs the CPU time
is the steadier number: what the pipeline adds to the model is the difference). Then the masks
of ``segcl predict`` are checked against the plain loop's, pixel for pixel.

Example (CamVid val, the checkpoint of a CamVid fine-tune; 2 CPU threads):

    OMP_NUM_THREADS=2 python scripts/bench_predict.py runs/camvid-ce \\
        ../shared/data/camvid/val/images --limit 101
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from segcl.data import EvalTransform, find_images, read_image, read_mask, to_tensor, write_mask
from segcl.engine.checkpoint import load_model
from segcl.engine.inference import masks_from_logits, resize_logits
from segcl.engine.predict import predict_files
from segcl.engine.runtime import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Example" + __doc__.split("Example", 1)[1])
    parser.add_argument("model", help="run directory / checkpoint / hf:// reference")
    parser.add_argument("images", help="folder of images")
    parser.add_argument("--limit", type=int, default=64, help="use the first N images")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2,
                        help="predict's reader and writer threads (each pool); torch's own "
                             "threads follow OMP_NUM_THREADS")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="take the best of N runs")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model, config = load_model(args.model, device)
    files = [f for f, _ in find_images([args.images])][: args.limit]
    d = config.data
    transform = EvalTransform(d.image_size, d.mean, d.std)
    images = [read_image(f) for f in files]
    tensors = [to_tensor(transform.resize(im), d.mean, d.std) for im in images]
    n = len(files)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def forward_only() -> None:
        for i in range(0, n, args.batch_size):
            x = torch.stack(tensors[i : i + args.batch_size]).to(device)
            masks_from_logits(model(x), images[i].shape[:2]).cpu()
        sync()

    @torch.inference_mode()
    def forward_full_resize() -> None:
        for i in range(0, n, args.batch_size):
            x = torch.stack(tensors[i : i + args.batch_size]).to(device)
            resize_logits(model(x), images[i].shape[:2]).max(1).indices.to(torch.uint8).cpu()
        sync()

    def end_to_end(out: Path) -> None:
        predict_files(model, config, files, out, batch_size=args.batch_size, device=device,
                      threads=args.threads)

    @torch.inference_mode()
    def plain_loop(out: Path) -> None:
        for f in files:
            im = read_image(f)
            x = transform(im)[0][None].to(device)
            mask = masks_from_logits(model(x), im.shape[:2])[0].cpu()
            write_mask(out / f"{f.stem}.png", mask.numpy(), d.palette)
        sync()

    def best(fn: Callable[[Path], None]) -> tuple[float, float]:
        """(images/s, CPU ms per image) of the fastest of ``--repeats`` runs after a warm-up."""
        runs = []
        for k in range(args.repeats + 1):
            with tempfile.TemporaryDirectory() as tmp:
                c0, t0 = time.process_time(), time.perf_counter()
                fn(Path(tmp))
                t, c = time.perf_counter() - t0, time.process_time() - c0
            if k:  # the first run warms up
                runs.append((t, c))
        t, c = min(runs)
        return n / t, 1000 * c / n

    rates = {"forward": best(lambda _: forward_only()), "segcl predict": best(end_to_end),
             "plain loop": best(plain_loop),
             "forward, full resize": best(lambda _: forward_full_resize())}
    print(f"device {device}, {n} images, batch {args.batch_size}, torch threads "
          f"{torch.get_num_threads()}, predict threads {args.threads}, model input "
          f"{d.image_size[0]}x{d.image_size[1]}")
    print(f"{'pipeline':<22}{'images/s':>10}{'vs forward':>12}{'CPU ms/img':>12}")
    top = rates["forward"][0]
    for name, (rate, cpu) in rates.items():
        print(f"{name:<22}{rate:>10.2f}{rate / top:>11.2f}x{cpu:>12.1f}")
    print(f"segcl predict / plain loop: {rates['segcl predict'][0] / rates['plain loop'][0]:.2f}x")
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        end_to_end(Path(a))
        plain_loop(Path(b))
        same = sum(np.array_equal(read_mask(Path(a) / f"{f.stem}.png"),
                                  read_mask(Path(b) / f"{f.stem}.png")) for f in files)
    print(f"masks of segcl predict equal to the plain loop's: {same}/{n}")


if __name__ == "__main__":
    main()
