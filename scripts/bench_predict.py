"""Throughput of ``segcl predict``: end to end vs. the model alone vs. a plain sequential loop.

Measured side by side in one run, on the same images and the same model:

1. ``forward``: the model forward (+ upsampling and argmax) on pre-loaded, pre-resized tensors --
   the ceiling for any prediction pipeline;
2. ``segcl predict``: :func:`segcl.engine.predict.predict_files` end to end (decode, resize,
   forward, upsample, write palette PNGs), decoding and writing overlapped with compute;
3. ``plain loop``: read one image, forward it, write its mask, next image.

Example (CamVid val, the checkpoint of a CamVid fine-tune):

    python scripts/bench_predict.py runs/camvid-ce ../shared/data/camvid/val/images --limit 101
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import torch

from segcl.data import find_images, read_image, to_tensor, write_mask
from segcl.engine.checkpoint import load_model
from segcl.engine.inference import resize_logits
from segcl.engine.predict import predict_files
from segcl.engine.runtime import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="run directory / checkpoint / hf:// reference")
    parser.add_argument("images", help="folder of images")
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="take the best of N runs")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model, config = load_model(args.model, device)
    files = [f for f, _ in find_images([args.images])][: args.limit]
    d = config.data
    size, mean, std, palette = d.image_size, d.mean, d.std, d.palette
    images = [read_image(f) for f in files]
    tensors = [to_tensor(cv2.resize(im, (size[1], size[0])), mean, std) for im in images]
    n = len(files)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def forward_only() -> None:
        for i in range(0, n, args.batch_size):
            x = torch.stack(tensors[i : i + args.batch_size]).to(device)
            logits = model(x)
            resize_logits(logits, images[i].shape[:2]).argmax(1).to(torch.uint8).cpu()
        sync()

    def end_to_end() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            predict_files(model, config, files, tmp, batch_size=args.batch_size, device=device)

    @torch.inference_mode()
    def plain_loop() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for f in files:
                im = read_image(f)
                x = to_tensor(cv2.resize(im, (size[1], size[0])), mean, std)[None].to(device)
                mask = resize_logits(model(x), im.shape[:2]).argmax(1)[0].to(torch.uint8).cpu()
                write_mask(Path(tmp) / f"{f.stem}.png", mask.numpy(), palette)
        sync()

    def best_rate(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return n / min(times)

    rates = {"forward": best_rate(forward_only), "segcl predict": best_rate(end_to_end),
             "plain loop": best_rate(plain_loop)}
    print(f"device {device}, {n} images, batch {args.batch_size}, torch threads "
          f"{torch.get_num_threads()}, model input {size[0]}x{size[1]}")
    print(f"{'pipeline':<16}{'images/s':>10}{'vs forward':>12}")
    for name, rate in rates.items():
        print(f"{name:<16}{rate:>10.2f}{rate / rates['forward']:>11.2f}x")
    print(f"segcl predict / plain loop: {rates['segcl predict'] / rates['plain loop']:.2f}x")


if __name__ == "__main__":
    main()
