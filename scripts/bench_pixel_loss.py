"""Benchmark: naive N x N pixel contrast vs the linear-memory form (forward + backward).

Usage::

    python scripts/bench_pixel_loss.py                       # N = 4096, 16384 side by side + 65536
    python scripts/bench_pixel_loss.py --sizes 4096 --large 0 --block-size 1024 4096

Every measurement runs in a fresh subprocess so that one measurement's allocations cannot hide
another's. Peak extra memory:
  * CUDA: ``torch.cuda.max_memory_allocated()`` minus the allocation before the call;
  * CPU: the process's resident-set high-water mark (``resource.getrusage(...).ru_maxrss``)
    after the call minus its value just before (inputs built and a tiny warm-up call done), i.e.
    physical memory actually touched by the loss's forward + backward (tracemalloc cannot see
    torch's CPU allocations).
Rows: ``naive`` = pixel_contrast_naive; ``linear`` = pixel_contrast (at tau = 0.07 its symmetric
fast path); ``general`` (``--general``) = the running-max Function used under DDP gathering or
for tau < 1/60.
Time: median wall-clock seconds of forward + backward over ``--repeats`` calls (the first call,
whose memory is measured, included); process CPU seconds are printed too because the CPU may be
shared. Inputs: unit-normalised random embeddings, labels drawn from 11 classes with a skewed
(CamVid-like) distribution, 5% ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLASS_FREQ = [0.25, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.04, 0.03, 0.02, 0.01]
IGNORE = 255
TAU = 0.07


def _inputs(n: int, dim: int, device: str):
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(n)
    emb = F.normalize(torch.randn(n, dim, generator=gen), dim=1)
    labels = torch.multinomial(torch.tensor(CLASS_FREQ), n, replacement=True, generator=gen)
    labels[torch.rand(n, generator=gen) < 0.05] = IGNORE
    return emb.to(device).requires_grad_(), labels.to(device)


def _call(impl: str, emb, labels, block_size: int):
    import torch

    from segcl.losses.pixel import pixel_contrast, pixel_contrast_naive, pixel_contrast_sum

    if impl == "naive":
        loss = pixel_contrast_naive(emb, labels, TAU, IGNORE)
    elif impl == "linear":
        loss = pixel_contrast(emb, labels, TAU, IGNORE, block_size=block_size)
    else:  # "general": keys passed explicitly -> the running-max Function (DDP / tiny tau path)
        valid = labels != IGNORE
        z, y = emb[valid], labels[valid]
        total, count = pixel_contrast_sum(z, y, z, y, temperature=TAU, block_size=block_size)
        loss = total / count
    (grad,) = torch.autograd.grad(loss, emb)
    return loss.detach(), grad


def worker(impl: str, n: int, dim: int, block_size: int, repeats: int, device: str) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able dict."""
    import torch

    cuda = device.startswith("cuda")
    small_emb, small_labels = _inputs(256, dim, device)
    _call(impl, small_emb, small_labels, block_size)  # warm-up: lazy inits, thread pools
    emb, labels = _inputs(n, dim, device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times, cpu_times, loss = [], [], None
    for i in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        loss, grad = _call(impl, emb, labels, block_size)
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        del grad
        if i == 0:
            if cuda:
                peak = torch.cuda.max_memory_allocated() - base
            else:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "impl": impl,
        "n": n,
        "block_size": block_size if impl != "naive" else None,
        "peak_bytes": peak,
        "time_s": statistics.median(times),
        "cpu_s": statistics.median(cpu_times),
        "times": times,
        "loss": float(loss) if loss is not None else None,
    }


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _measure(args: argparse.Namespace, impl: str, n: int, block: int, repeats: int) -> dict:
    if impl == "naive" and not args.device.startswith("cuda"):
        need = 8 * 4 * n * n  # about eight N x N float32 buffers live at the peak
        avail = _available_bytes()
        if avail is not None and need > avail:
            return {"impl": impl, "n": n, "skipped": f"needs ~{need / 2**30:.1f} GiB"}
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        str(n),
        "--dim",
        str(args.dim),
        "--block-size",
        str(block),
        "--repeats",
        str(repeats),
        "--device",
        args.device,
    ]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        return {"impl": impl, "n": n, "skipped": f"failed: {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mib(b: float) -> str:
    return f"{b / 2**20:9.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--large", type=int, default=65536, help="linear only; 0 to skip")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, nargs="+", default=[1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS (0: default)")
    parser.add_argument(
        "--general", action="store_true", help="also time the general running-max Function"
    )
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        impl, n = args.worker[0], int(args.worker[1])
        result = worker(impl, n, args.dim, args.block_size[0], args.repeats, args.device)
        print(json.dumps(result))
        return

    import torch

    method = (
        "torch.cuda.max_memory_allocated"
        if args.device.startswith("cuda")
        else ("ru_maxrss high-water delta, fresh subprocess per row")
    )
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"device {args.device}, threads {args.threads or torch.get_num_threads()}, "
        f"D={args.dim}, tau={TAU}, 11 classes, 5% ignored"
    )
    print(f"# peak extra memory: {method}; time: median of {args.repeats} fwd+bwd calls")
    print(f"# load average at start: {os.getloadavg()}")
    header = (
        f"{'N':>6} {'impl':>8} {'block':>6} {'peak MiB':>9} {'time s':>8} {'cpu s':>8} "
        f"{'mem ratio':>9} {'time ratio':>10} {'loss':>10}"
    )
    print(header)
    print("-" * len(header))
    goals = []
    for n in args.sizes:
        naive = _measure(args, "naive", n, args.block_size[0], args.repeats)
        _print_row(naive, None)
        for block in args.block_size:
            row = _measure(args, "linear", n, block, args.repeats)
            _print_row(row, naive)
            if args.general and block == args.block_size[0]:
                _print_row(_measure(args, "general", n, block, args.repeats), naive)
            if "skipped" not in row and "skipped" not in naive:
                mem = row["peak_bytes"] / naive["peak_bytes"]
                speed = row["time_s"] / naive["time_s"]
                ok = "met" if mem <= 0.1 and speed <= 1.5 else "NOT met"
                goals.append(
                    f"N={n} block={block}: mem {mem:.3f} (<= 0.1), time {speed:.2f}x "
                    f"(<= 1.5) -> {ok}"
                )
    if args.large:
        _print_row(_measure(args, "linear", args.large, args.block_size[0], 1), None)
    print(f"# load average at end: {os.getloadavg()}")
    for line in goals:
        print(f"# goal {line}")


def _print_row(row: dict, naive: dict | None) -> None:
    if "skipped" in row:
        print(f"{row['n']:>6} {row['impl']:>8} {'':>6} skipped ({row['skipped']})")
        return
    mem_ratio = time_ratio = ""
    if naive is not None and "skipped" not in naive:
        mem_ratio = f"{row['peak_bytes'] / naive['peak_bytes']:.3f}"
        time_ratio = f"{row['time_s'] / naive['time_s']:.2f}"
    block = row["block_size"] or "-"
    print(
        f"{row['n']:>6} {row['impl']:>8} {block:>6} {_mib(row['peak_bytes'])} "
        f"{row['time_s']:8.2f} {row['cpu_s']:8.2f} {mem_ratio:>9} {time_ratio:>10} "
        f"{row['loss']:10.5f}"
    )


if __name__ == "__main__":
    main()
