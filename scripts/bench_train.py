"""Training throughput of every method: the real loop vs. the model alone vs. the data alone.

For each method, measured side by side in one run, same model, same shapes, same process:

(a) ``limit``: the real ``segcl finetune`` / ``segcl pretrain`` training loop, fed batches that
    were loaded once before the clock starts and replayed from memory -- the model's forward,
    backward and optimiser step (plus the loop's own bookkeeping): the ceiling for this loop;
(b) ``real``: the same loop reading CamVid (or any dataset) from disk with ``--workers``
    DataLoader workers, exactly as the command runs it;
(c) ``data``: the data loaders alone (decode, augment, collate; both streams for ``semi``).

Each prints steps/s and labelled images/s; ``real/limit`` is the fraction of the model's own
rate that the data pipeline lets the loop reach (1.00 = the pipeline never slows training).
Steps are timed after ``--warmup`` steps, from the loop's own step callbacks.

Examples (2 CPU cores)::

    # every method at 96x128, batch 8, the default workers
    python scripts/bench_train.py ../shared/data/camvid --layout camvid

    # plain fine-tuning, decoded-image cache off vs. on (same run)
    python scripts/bench_train.py ../shared/data/camvid --layout camvid --methods finetune \\
        --cache off,on

    # scaling: batch sizes (one row each), image size, a GPU
    python scripts/bench_train.py ../shared/data/camvid --layout camvid --methods finetune \\
        --batch-sizes 4,8,16
    python scripts/bench_train.py ../shared/data/camvid --layout camvid --methods finetune \\
        --image-size 192x256
    python scripts/bench_train.py ../shared/data/camvid --layout camvid --device cuda \\
        --image-size 360x480 --batch-sizes 16

    # processes: the real loop in 2 processes under torchrun (gloo on CPU; OMP_NUM_THREADS
    # defaults to cores / processes); the batch is per process, img/s counts all processes;
    # every measurement of a process shares one process group (segcl.engine.distributed)
    python scripts/bench_train.py ../shared/data/camvid --layout camvid --methods finetune \\
        --nproc 2
    # the same by hand
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 scripts/bench_train.py \\
        ../shared/data/camvid --layout camvid --methods finetune
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import segcl.engine.data_setup as data_setup
import segcl.engine.finetune as finetune_engine
import segcl.engine.pretrain as pretrain_engine
from segcl import methods as registry
from segcl.config import ContrastConfig, DataConfig, FinetuneConfig, PretrainConfig, SemiConfig
from segcl.engine import distributed
from segcl.engine.callbacks import Callback

#: the pre-training methods: every registered one
PRETRAIN_METHODS = registry.names("pretrain")
#: the benchmarked jobs: plain fine-tuning, its two additions, then each pre-training method
METHODS = ("finetune", "cross-image", "semi", *PRETRAIN_METHODS)


class StepTimer(Callback):
    """Records the time of every step after ``warmup``; ``rate()`` is steps per second."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times = warmup, []

    def on_step(self, step: int, logs: dict[str, Any]) -> None:
        if step >= self.warmup:
            self.times.append(time.perf_counter())

    def rate(self) -> float:
        if len(self.times) < 2:
            return float("nan")
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


class Replay:
    """A loader look-alike that replays ``k`` batches of a real loader from memory."""

    def __init__(self, loader: Any, k: int) -> None:
        self.batch_size, self.length = loader.batch_size, len(loader)
        self.batches = list(itertools.islice(iter(loader), k))

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(itertools.cycle(self.batches), self.length)


@contextlib.contextmanager
def data_mode(mode: str, captured: dict[str, Any], k: int = 4) -> Iterator[None]:
    """Within the block, the engines' loaders are the real ones (``real``) or replays of a few
    of their batches (``limit``); every real loader made is kept in ``captured``."""
    real_train, real_stream = data_setup.train_loader, data_setup.stream_loader

    def train_loader(*args: Any, **kwargs: Any) -> Any:
        loader, sampler = real_train(*args, **kwargs)
        captured["train"] = loader
        return (Replay(loader, k) if mode == "limit" else loader), sampler

    def stream_loader(*args: Any, **kwargs: Any) -> Any:
        stream = real_stream(*args, **kwargs)
        captured["stream"] = (args, kwargs)
        if mode == "limit":
            return itertools.cycle(list(itertools.islice(stream, k)))
        return stream

    patches = [(finetune_engine, "train_loader", train_loader),
               (pretrain_engine, "train_loader", train_loader),
               (data_setup, "stream_loader", stream_loader)]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    try:
        for mod, name, fn in patches:
            setattr(mod, name, fn)
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


def make_config(method: str, a: argparse.Namespace, batch: int, cache: str, out: str) -> Any:
    """The job config of ``method`` for this benchmark (no validation inside the timed steps)."""
    data = DataConfig(root=a.data, layout=a.layout, image_size=a.size, workers=a.workers,
                      labeled_fraction=a.labeled_fraction)
    if hasattr(DataConfig, "cache"):
        data = replace(data, cache=cache)
    steps = a.warmup + a.steps
    if method in PRETRAIN_METHODS:
        return PretrainConfig(data=data, method=method, encoder=a.encoder, batch_size=batch,
                              steps=steps, device=a.device, out=out, log_every=1)
    cfg = FinetuneConfig(data=data, encoder=a.encoder, batch_size=batch, steps=steps,
                         val_every=10**6, device=a.device, out=out, log_every=1,
                         brightness=0.3, contrast_jitter=0.3)
    if method == "cross-image":
        cfg = replace(cfg, contrast=ContrastConfig(enabled=True))
    if method == "semi":
        cfg = replace(cfg, semi=SemiConfig(enabled=True))
    return cfg


def run_job(cfg: Any, timer: StepTimer) -> None:
    if isinstance(cfg, PretrainConfig):
        pretrain_engine.pretrain(cfg, callback=timer)
    else:
        finetune_engine.finetune(cfg, callback=timer)


def data_rate(captured: dict[str, Any], steps: int) -> float:
    """Steps per second of the captured loaders alone (both streams, when there are two)."""
    loader = captured["train"]
    stream = None
    if "stream" in captured:
        args, kwargs = captured["stream"]
        stream = data_setup.stream_loader(*args, **kwargs)
        next(stream)
    it = iter(loader)
    next(it)
    t0, done = time.perf_counter(), 0
    while done < steps:
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if stream is not None:
            next(stream)
        done += 1
    return done / (time.perf_counter() - t0)


def measure(method: str, a: argparse.Namespace, batch: int, cache: str) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method, "batch": batch, "cache": cache}
    captured: dict[str, Any] = {}
    for mode in ("limit", "real"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = make_config(method, a, batch, cache, str(Path(tmp) / "run"))
            timer = StepTimer(a.warmup)
            with data_mode(mode, captured):
                run_job(cfg, timer)
            row[mode] = timer.rate()
    row["data"] = data_rate(captured, a.steps)
    captured.clear()
    row["ratio"] = row["real"] / row["limit"]
    return row


def relaunch_under_torchrun(nproc: int) -> None:
    """Replace this process by ``torchrun --standalone --nproc_per_node nproc`` running this
    script with the same arguments (without ``--nproc``); OMP_NUM_THREADS, when unset, becomes
    the cores divided among the processes, and SEGCL_DIST_TIMEOUT, when unset, 600 s (a process
    stuck in a collective fails the benchmark instead of hanging it for the default 30 min)."""
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    os.environ.setdefault(distributed.TIMEOUT_ENV, "600")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(nproc), str(Path(__file__).resolve()), *argv]
    sys.stdout.flush()
    os.execv(sys.executable, cmd)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("Examples", 1)[1])
    p.add_argument("data")
    p.add_argument("--layout", default="auto")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--image-size", default="96x128")
    p.add_argument("--batch-sizes", default="8")
    p.add_argument("--workers", type=int, default=DataConfig.workers)
    p.add_argument("--labeled-fraction", type=float, default=0.125,
                   help="labelled subset (the label-efficiency protocol's 1/8 by default; the "
                        "rest is the unlabelled stream of semi)")
    p.add_argument("--cache", default="auto", help="comma-separated --cache settings to compare")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--nproc", type=int, default=1,
                   help="run the training loops in N processes under torchrun (gloo on CPU, "
                        "NCCL on CUDA); batch sizes are per process, img/s counts all of them")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    a = p.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if a.nproc > 1 and world == 1:
        relaunch_under_torchrun(a.nproc)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    say = print if main_rank else (lambda *args, **kwargs: None)
    a.size = tuple(int(v) for v in a.image_size.split("x"))
    say(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
        f"{world} process(es), device {a.device}, {a.encoder} {a.image_size}, workers "
        f"{a.workers}, {a.steps} timed steps after {a.warmup}")
    head = (f"{'method':<12} {'batch':>5} {'cache':>5} {'procs':>5} | {'limit step/s':>12} "
            f"{'real step/s':>11} {'data step/s':>11} | {'real img/s':>10} | {'real/limit':>10}")
    say(head + "\n" + "-" * len(head))
    rows = []
    for batch in (int(b) for b in a.batch_sizes.split(",")):
        for method in a.methods.split(","):
            if method not in METHODS:
                raise SystemExit(f"--methods: unknown method {method!r} ({', '.join(METHODS)})")
            for cache in a.cache.split(","):
                r = measure(method, a, batch, cache)
                r["procs"] = world
                rows.append(r)
                say(f"{method:<12} {batch:>5} {cache:>5} {world:>5} | {r['limit']:>12.2f} "
                    f"{r['real']:>11.2f} {r['data']:>11.2f} | {r['real'] * batch * world:>10.1f}"
                    f" | {r['ratio']:>10.2f}", flush=True)
    if a.json and main_rank:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
