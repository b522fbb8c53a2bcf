"""The papers' label-efficiency experiment on one dataset, arm by arm, appended to one results file.

For each labelled fraction and each arm, the same total budget of optimiser steps (``--budget``):

- ``random``: fine-tune from random init for the whole budget;
- each registered pre-training method (``simclr``, ``moco``, ``multiscale``, ``supcon``):
  pre-train for ``--pretrain-share`` of the budget, then fine-tune (``--init``) for the rest;
  with ``--pretrain-steps N``, pre-train N steps and then fine-tune for the whole budget (the
  random arm's schedule; recorded as ``ARM (N pre-training steps)``, its minutes include the
  pre-training); ``multiscale:global+local`` etc. select the multi-scale terms (the ablation);
  with ``--then ARM``, they fine-tune as the fine-tuning arm ARM does (``--then semi-ema``:
  pre-training followed by the semi-supervised fine-tuning; recorded as ``moco then semi-ema``);
- ``cross-image``: fine-tune with the auxiliary cross-image pixel contrast for the whole budget;
- ``semi``: online semi-supervised fine-tuning (``--semi``) on the unlabelled rest of the split;
- ``semi-shared``: the same with UniMatch's shared forward (``--semi-shared-forward``);
- ``semi+contrast``: the same plus the label-based pixel contrast on real masks and confident
  pseudo-labels (``--contrast cross-image``, warmed up);
- ``semi-ema``: a mean teacher (``--ema 0.99 --semi-teacher ema``, no feature perturbation);
  ``semi-ema+contrast``: the same plus the pixel contrast, on the real masks and on the strong
  views' confident pseudo-labels (``--contrast cross-image``, warmed up);
  ``semi-adaptive``: the same with class-wise adaptive thresholds
  (``--semi-threshold-mode adaptive --semi-threshold-momentum 0.99``);
- ``supcon-pseudo``: the ``random`` arm's model (same fraction) pseudo-labels the unlabelled
  images; supcon pre-training and fine-tuning then use labelled + pseudo-labelled images.

``--pretrain-extra`` / ``--finetune-extra`` pass further flags to ``segcl pretrain`` /
``segcl finetune`` (say ``--pretrain-extra "--optimizer adamw"``); give such a run a
``--tag`` so it is recorded as its own arm (``supcon [adamw]``) next to the untagged one.

Every arm records its val mIoU (``segcl evaluate``), its wall-clock time and its exact commands.
Arms already in the results file are skipped (``--force`` reruns them), so the table can be built
across sessions and machines. Writes ``results.json``, ``results.md``, ``miou_vs_labels.png`` and
``gain_vs_labels.png``.

Examples (2 CPU cores, reduced resolution; ``--preset gpu`` for one GPU):

    # the README's CamVid table: random init vs online semi-supervised, 3 seeds
    python scripts/label_efficiency.py ../shared/data/camvid --layout camvid --preset cpu \
        --fractions 0.125 --arms random,semi --seeds 0,1,2 --out results/label-efficiency

    # cross-sequence second opinion: sequence 0001TP held out of training, used as val
    python scripts/label_efficiency.py ../shared/data/camvid --layout camvid --preset cpu \
        --arms random,semi --seeds 0 --holdout 0001TP --out results/label-efficiency

    # one GPU: one arm and seed per command (each fits a 10-minute slot)
    python scripts/label_efficiency.py ../shared/data/camvid --layout camvid --preset gpu \
        --arms semi --seeds 0 --tag gpu --out results/label-efficiency

    python scripts/label_efficiency.py ../shared/data/camvid --layout camvid --fractions 0.125 \\
        --arms random,supcon --budget 600 --image-size 96x128 --out results/label-efficiency

    # a tuning variant, recorded as the arm "supcon [adamw]"
    python scripts/label_efficiency.py ../shared/data/camvid --layout camvid --arms supcon \\
        --pretrain-lr 1e-3 --pretrain-extra "--optimizer adamw" --tag adamw
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: the protocol per machine. cpu: what the README's CamVid table ran on 2 cores (96x128, 1000
#: steps, one strong view and 4 unlabelled images per step for the semi arms). gpu: 360x480 on
#: one GPU with bf16 and channels_last (finetune's defaults on CUDA), UniMatch's two strong
#: views and a 1:1 unlabelled batch; one arm and seed per command, sized for a 10-minute slot.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"image_size": "96x128", "budget": 1000, "val_every": 40, "workers": 1,
            "finetune_extra": "--brightness 0.3 --contrast-jitter 0.3",
            "semi_extra": "--semi-views 1 --unlabeled-batch-size 4"},
    "gpu": {"image_size": "360x480", "budget": 4000, "batch_size": 16, "val_every": 100,
            "workers": 12, "finetune_extra": "--brightness 0.3 --contrast-jitter 0.3 "
                                              "--device cuda"},
}
#: the protocol's compositions of fine-tuning flags, next to the registered methods' own arms
#: (:func:`finetune_arms`)
VARIANTS = {
    "semi-shared": ["--semi", "--semi-shared-forward"],
    "semi+contrast": ["--semi", "--semi-shared-forward", "--contrast", "cross-image",
                      "--contrast-warmup", "200"],
    # a mean teacher: the EMA of the weights (evaluation mode) gives the pseudo-labels and is
    # the model kept; no feature-perturbation branch (1.6x a supervised step instead of 2.2x)
    "semi-ema": ["--semi", "--ema", "0.99", "--semi-teacher", "ema", "--no-semi-fp"],
    "semi-ema+contrast": ["--semi", "--ema", "0.99", "--semi-teacher", "ema", "--no-semi-fp",
                          "--contrast", "cross-image", "--contrast-warmup", "200"],
    # the same with FreeMatch's self-adaptive class-wise thresholds (capped at 0.95); momentum
    # 0.99 rather than FreeMatch's 0.999, tuned for ~10^6 steps: at 0.999 the thresholds would
    # cover only 63% of the way from 1/C to the model's confidence by step 1000 of 2000-3000
    "semi-adaptive": ["--semi", "--ema", "0.99", "--semi-teacher", "ema", "--no-semi-fp",
                      "--semi-threshold-mode", "adaptive", "--semi-threshold-momentum", "0.99"],
    "ema": ["--ema", "0.99"],
}
#: a pre-training arm ``METHOD-pseudo`` pre-trains METHOD with the random arm's pseudo-labels
PSEUDO_SUFFIX = "-pseudo"


def finetune_arms() -> dict[str, list[str]]:
    """The arms that only fine-tune, with their flags: random init, every registered
    fine-tuning method that needs no trained teacher (its own switch), and :data:`VARIANTS`."""
    from segcl import methods as registry

    arms: dict[str, list[str]] = {"random": []}
    for name in registry.names("finetune"):
        method = registry.get(name, "finetune")
        if not method.teacher:  # (pseudo-labels need a teacher: see PSEUDO_SUFFIX)
            arms[name] = shlex.split(method.flag)
    return {**arms, **VARIANTS}


def pretrain_arms() -> tuple[str, ...]:
    """The registered pre-training methods (each arm pre-trains, then fine-tunes)."""
    from segcl import methods as registry

    return registry.names("pretrain")


def run(args: list[str], log: list[str]) -> None:
    """Run one segcl command (recorded in ``log``), failing loudly."""
    log.append("segcl " + " ".join(shlex.quote(a) for a in args))
    print("$", log[-1], flush=True)
    proc = subprocess.run([sys.executable, "-m", "segcl", *args])
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {log[-1]}")


def arm_commands(arm: str, frac: float, a: argparse.Namespace, work: Path) -> tuple[list, Path]:
    """The segcl commands of one arm and the run directory whose model gets evaluated."""
    common = ["--layout", a.layout, "--image-size", a.image_size, "--encoder", a.encoder,
              "--seed", str(a.seed), "--batch-size", str(a.batch_size), "--workers",
              str(a.workers), "--labeled-fraction", str(frac), "--quiet"]
    ft = ["finetune", a.data, *common, "--lr", str(a.finetune_lr), "--val-every",
          str(a.val_every), *shlex.split(a.finetune_extra)]
    method, _, terms = arm.partition(":")
    finetune_only = finetune_arms()

    def finetune_flags(name: str) -> list[str]:
        extra = finetune_only[name]
        return [*extra, *shlex.split(a.semi_extra)] if "--semi" in extra else extra

    if method in finetune_only:
        out = work / "finetune"
        return [[*ft, "--steps", str(a.budget), *finetune_flags(method), "--out", str(out)]], out
    pre_steps = a.pretrain_steps or int(a.budget * a.pretrain_share)
    fine_steps = a.budget if a.pretrain_steps else a.budget - pre_steps
    pseudo: list[str] = []
    if method.endswith(PSEUDO_SUFFIX):
        teacher = a.out / "runs" / f"random@{frac}-{a.budget}steps" / f"seed{a.seed}" / "finetune"
        if not teacher.exists():
            raise SystemExit(f"{method} needs the random arm at fraction {frac} first")
        pseudo, method = ["--pseudo-labels", str(teacher)], method[: -len(PSEUDO_SUFFIX)]
    if method not in pretrain_arms():
        known = [*finetune_only, *pretrain_arms(), *(m + PSEUDO_SUFFIX for m in pretrain_arms())]
        raise SystemExit(f"unknown arm '{arm}'; choose from {', '.join(known)}")
    pre = ["pretrain", a.data, *common, "--method", method, "--steps", str(pre_steps),
           "--lr", str(a.pretrain_lr), *pseudo, *shlex.split(a.pretrain_extra),
           "--out", str(work / "pretrain")]
    if a.grid:
        pre += ["--grid", a.grid]
    if terms:
        pre += ["--losses", terms.replace("+", ",")]
    out = work / "finetune"
    then = finetune_flags(a.then) if a.then else []
    fine = [*ft, "--steps", str(fine_steps), "--init", str(work / "pretrain"), *then,
            *pseudo, "--out", str(out)]
    return [pre, fine], out


THIN_CLASSES = ("pole", "sign_symbol", "pedestrian", "bicyclist")


def _stats(values: list[float]) -> str:
    """``mean ± std`` (sample std over seeds) in mIoU points."""
    m = statistics.fmean(values) * 100
    sd = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{m:.2f} ± {sd:.2f}"


def _mean(rs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rs if r.get(key) is not None]
    return statistics.fmean(values) if len(values) == len(rs) and values else None


#: wall times within this share count as equal compute: the same 3000-step random-init run
#: took 45 to 64 minutes on the shared 2-core machine (results.json)
WALL_TOLERANCE = 0.25


def _held_out(arm: str) -> str:
    """``holdout P`` for an arm validated on the held-out sequence P (``--holdout``), else
    empty (the arm was validated on val)."""
    held = re.search(r"holdout \S+(?=\])", arm)
    return held.group(0) if held else ""


def _baseline(arm: str) -> str:
    """The random-init arm validated on the same images as ``arm``: ``random``, or
    ``random [holdout P]`` for an arm measured on the held-out sequence P (:func:`_held_out`).
    Gains only ever compare arms validated on the same split."""
    held = _held_out(arm)
    return f"random [{held}]" if held else "random"


def _equal_compute(arm: str, frac: float, rs: list[dict[str, Any]],
                   groups: dict[tuple[str, float, int], list[dict[str, Any]]]) -> str:
    """Final mIoU gain over the strongest random-init schedule (on the arm's split:
    :func:`_baseline`) at this fraction that took no longer, paired by seed
    (:func:`_timed_pairs`)."""
    base_arm = _baseline(arm)
    if arm == base_arm or _mean(rs, "miou_final") is None:
        return "-"
    best: tuple[float, list[float], int] | None = None
    for (a, f, steps), g in groups.items():
        if a != base_arm or f != frac:
            continue
        pairs = _timed_pairs(rs, g)
        if not pairs:
            continue
        strength = statistics.fmean(base for _, base in pairs)
        if best is None or strength > best[0]:
            best = (strength, [(mine - base) * 100 for mine, base in pairs], steps)
    if best is None:
        return "-"
    _, diffs, steps = best
    return _gain_text(diffs, f"vs random {steps} steps, ")


def _timed_pairs(rs: list[dict[str, Any]],
                 base_rs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """:func:`_pairs`, when the baseline schedule took no longer for every seed both have: at
    most the arm's wall time (pre-training included), up to :data:`WALL_TOLERANCE` more, on
    the same machine (:func:`machine_id`; records from before it was kept count as one
    machine). Empty otherwise: a schedule that fits the budget for only some seeds is not an
    equal-compute baseline."""
    base = {r["seed"]: r for r in base_rs if r.get("miou_final") is not None}
    shared = [(r, base[r["seed"]]) for r in rs
              if r["seed"] in base and r.get("miou_final") is not None]
    if not shared or any(
            r.get("minutes") is None or b.get("minutes") is None
            or b.get("machine") != r.get("machine")
            or b["minutes"] > r["minutes"] * (1 + WALL_TOLERANCE) for r, b in shared):
        return []
    return [(r["miou_final"], b["miou_final"]) for r, b in shared]


def machine_id() -> str:
    """Where a run's wall time was measured: the CPU model, the core count and the boot id.
    Wall times compare only between runs with the same id (one machine, one boot): the same
    schedule ran 2.5x faster on one 2-core machine than on another."""
    import os
    import platform

    model = platform.processor() or platform.machine()
    boot = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores" + (f", boot {boot}" if boot else "")


def _label_gap(groups: dict[tuple[str, float, int], list[dict[str, Any]]]) -> list[str]:
    """Rows of the label gap, per labels-only recipe (``random``, ``random [ce+dice]``, ...)
    measured with all labels: its best final mIoU (mean over seeds, best schedule) with all
    labels minus its best at each fraction, the room a method can win back."""
    best: dict[str, dict[float, float]] = {}
    for (arm, frac, _), g in groups.items():
        value = _mean(g, "miou_final")
        if arm.startswith("random") and not _held_out(arm) and value is not None:
            per = best.setdefault(arm, {})
            per[frac] = max(per.get(frac, -1.0), value)
    rows = [f"| {arm} | {f:g} | {v * 100:.2f} | {per[1.0] * 100:.2f} | {(per[1.0] - v) * 100:.2f} |"
            for arm, per in sorted(best.items()) if 1.0 in per
            for f, v in sorted(per.items()) if f < 1.0]
    if not rows:
        return []
    return ["", "Label gap (random init, final checkpoint, mean over seeds, each recipe's best "
            "schedule):", "", "| recipe | labelled | val mIoU | val mIoU, all labels | gap |",
            "|---|---|---|---|---|", *rows]


def _pairs(rs: list[dict[str, Any]], base_rs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """``(final mIoU of rs, final mIoU of base_rs)`` for every seed both have (same labelled
    subset and initialisation)."""
    base = {r["seed"]: r["miou_final"] for r in base_rs if r.get("miou_final") is not None}
    return [(r["miou_final"], base[r["seed"]])
            for r in rs if r["seed"] in base and r.get("miou_final") is not None]


def _gain_text(diffs: list[float], what: str = "") -> str:
    """Gains in points: one value with its sign, or mean ± std, and how many seeds."""
    shown = _stats([d / 100 for d in diffs]) if len(diffs) > 1 else f"{diffs[0]:+.2f}"
    return f"{shown} ({what}{len(diffs)} seed{'s' * (len(diffs) > 1)})"


def _paired_gain(rs: list[dict[str, Any]], base_rs: list[dict[str, Any]]) -> str:
    """Final mIoU of ``rs`` minus ``base_rs``'s, paired by seed; ``-`` when no seed is shared
    or ``rs`` is the base itself."""
    pairs = [] if rs is base_rs else _pairs(rs, base_rs)
    return _gain_text([(mine - base) * 100 for mine, base in pairs]) if pairs else "-"


def _minutes(rs: list[dict[str, Any]], key: str = "minutes") -> str:
    """Mean of ``key`` (wall minutes) over the seeds that recorded it; ``-`` for none (an arm
    without pre-training has no ``pretrain_minutes``)."""
    known = [r[key] for r in rs if r.get(key)]
    return f"{statistics.fmean(known):.1f}" if known else "-"


def write_reports(results: list[dict[str, Any]], out: Path) -> None:
    """results.md (mean ± std over seeds, val-selected and final checkpoint, gain over random
    init, per-class IoU with the thin classes), miou_vs_labels.png (error bars = std) and
    gain_vs_labels.png (:func:`_recipe_gains`)."""
    groups: dict[tuple[str, float, int], list[dict[str, Any]]] = {}
    for r in results:  # one row per arm, fraction and schedule
        groups.setdefault((r["arm"], r["fraction"], r["budget_steps"]), []).append(r)
    lines = ["| arm | labelled | seeds | steps | val mIoU (val-selected) | val mIoU (final) "
             "| gain over random (final, paired by seed) | gain over random with the same "
             "[recipe] | gain at equal compute | minutes per run | of which pre-training |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (arm, frac, steps), rs in sorted(groups.items(), key=_row_order):
        gain = _paired_gain(rs, groups.get((_baseline(arm), frac, steps), []))
        # a tagged arm ("semi [ce+dice]") against labels alone with the same recipe
        # ("random [ce+dice]"): what the unlabelled images add on top of that recipe
        tag = arm[arm.index("["):] if "[" in arm else ""
        recipe = "-"
        if tag and not arm.startswith("random"):
            recipe = _paired_gain(rs, groups.get((f"random {tag}", frac, steps), []))
        final = _stats([r["miou_final"] for r in rs]) if all("miou_final" in r for r in rs) else "-"
        lines.append(
            f"| {arm} | {frac:g} ({rs[0]['labeled_images']} img) | "
            f"{','.join(str(r['seed']) for r in sorted(rs, key=lambda r: r['seed']))} | "
            f"{rs[0]['budget_steps']} | {_stats([r['miou'] for r in rs])} | {final} | {gain} | "
            f"{recipe} | {_equal_compute(arm, frac, rs, groups)} | {_minutes(rs)} | "
            f"{_minutes(rs, 'pretrain_minutes')} |")
    lines += _label_gap(groups)
    lines += ["", "Per-class IoU (final checkpoint, mean over seeds); the thin classes are "
              "marked with *.", ""]
    classes = next((r["classes"] for r in results if r.get("classes")), None)
    if classes:
        head = [f"{c}*" if c in THIN_CLASSES else c for c in classes]
        lines += ["| arm | labelled | steps | " + " | ".join(head) + " |",
                  "|---|---|---|" + "---|" * len(classes)]
        for (arm, frac, steps), rs in sorted(groups.items(), key=_row_order):
            per = [r.get("iou_final") or r.get("iou") for r in rs]
            if not all(per):
                continue
            means = [statistics.fmean(v[c] or 0.0 for v in per) * 100
                     for c in range(len(classes))]
            lines.append(f"| {arm} | {frac:g} | {steps} | "
                         + " | ".join(f"{m:.1f}" for m in means) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    from segcl.viz import plot_lines

    # one line per arm measured at two or more fractions, each at its longest schedule
    longest = _longest_schedules(groups)
    series: dict[str, list[tuple[float, float, float]]] = {}
    for arm, per in sorted(longest.items()):
        if len(per) < 2:
            continue
        steps = sorted({st for st, _ in per.values()})
        label = f"{arm} ({steps[0]}{'-' + str(steps[-1]) if len(steps) > 1 else ''} steps)"
        for _, (_, rs) in sorted(per.items()):
            vals = [r["miou_final"] * 100 for r in rs]
            series.setdefault(label, []).append(
                (rs[0]["labeled_images"], statistics.fmean(vals),
                 statistics.stdev(vals) if len(vals) > 1 else 0.0))
    if series:
        plot_lines(series, out / "miou_vs_labels.png", "labelled images",
                   "val mIoU (final checkpoint)",
                   "mean ± std over seeds, longest schedule per point",
                   logx=True)
    gains = _recipe_gains(longest, groups)
    if gains:
        plot_lines(gains, out / "gain_vs_labels.png", "labelled images",
                   "final val mIoU minus the same recipe's",
                   "what the unlabelled images add (paired by seed, mean ± std)", logx=True)


def _longest_schedules(groups: dict[tuple[str, float, int], list[dict[str, Any]]],
                       ) -> dict[str, dict[float, tuple[int, list[dict[str, Any]]]]]:
    """Per arm and fraction, its longest schedule (the converged one) as ``(steps, records)``;
    the ablation subsets (multiscale:...), held-out splits and arms without a final checkpoint
    are left to the table."""
    longest: dict[str, dict[float, tuple[int, list[dict[str, Any]]]]] = {}
    for (arm, frac, steps), rs in groups.items():
        if ":" in arm or _held_out(arm) or not all("miou_final" in r for r in rs):
            continue
        if steps > longest.setdefault(arm, {}).get(frac, (-1, []))[0]:
            longest[arm][frac] = (steps, rs)
    return longest


def _recipe_gains(longest: dict[str, dict[float, tuple[int, list[dict[str, Any]]]]],
                  groups: dict[tuple[str, float, int], list[dict[str, Any]]],
                  ) -> dict[str, list[tuple[float, float, float]]]:
    """Per tagged arm (``semi-ema [ce+dice]``) measured at two or more fractions: its final
    mIoU minus that of labels alone with the same recipe (``random [ce+dice]``, same fraction
    and schedule), paired by seed, as ``(labelled images, mean, std)`` points; a flat line at
    0 stands for the recipe itself. The seeds' labelled subsets move mIoU by several points,
    so the paired differences show what the unlabelled images add more plainly than the
    absolute curves."""
    gains: dict[str, list[tuple[float, float, float]]] = {}
    for arm, per in sorted(longest.items()):
        tag = arm[arm.index("["):] if "[" in arm else ""
        if not tag or arm.startswith("random"):
            continue
        points = []
        for frac, (steps, rs) in sorted(per.items()):
            diffs = [(mine - base) * 100
                     for mine, base in _pairs(rs, groups.get((f"random {tag}", frac, steps), []))]
            if diffs:
                points.append((rs[0]["labeled_images"], statistics.fmean(diffs),
                               statistics.stdev(diffs) if len(diffs) > 1 else 0.0))
        if len(points) > 1:
            gains[arm] = points
    if gains:
        xs = sorted({x for points in gains.values() for x, _, _ in points})
        gains["labels alone, same recipe"] = [(x, 0.0, 0.0) for x in xs]
    return gains


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("Examples", 1)[1])
    p.add_argument("data")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="the protocol's settings for a machine (explicit flags still win)")
    p.add_argument("--semi-extra", default="", help="more flags for the semi arms' finetune")
    p.add_argument("--layout", default="auto")
    p.add_argument("--out", type=Path, default=Path("results/label-efficiency"))
    p.add_argument("--fractions", default="0.125")
    p.add_argument("--arms", default="random,simclr,multiscale,supcon,cross-image,supcon-pseudo")
    p.add_argument("--budget", type=int, default=600, help="optimiser steps per arm in total")
    p.add_argument("--pretrain-share", type=float, default=0.5)
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="pre-training arms: pre-train N steps, then fine-tune for the whole "
                        "--budget (instead of splitting it by --pretrain-share)")
    p.add_argument("--then", default="", metavar="ARM",
                   help="pre-training arms fine-tune as this fine-tuning arm does (semi-ema: "
                        "pre-training followed by the semi-supervised fine-tuning)")
    p.add_argument("--image-size", default="96x128")
    p.add_argument("--grid", default=None, help="pixel-loss grid HxW for pre-training")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--finetune-lr", type=float, default=0.03)
    p.add_argument("--pretrain-lr", type=float, default=0.1)
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", default="0", help="comma-separated seeds (labelled subset and init)")
    p.add_argument("--pretrain-extra", default="", help="more flags for segcl pretrain")
    p.add_argument("--finetune-extra", default="", help="more flags for segcl finetune")
    p.add_argument("--tag", default="", help="record the arms as 'ARM [TAG]' (tuning variants)")
    p.add_argument("--holdout", default="", metavar="PREFIX",
                   help="cross-sequence check: train without the training images named PREFIX* "
                        "and validate on them (CamVid: 0001TP)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--reevaluate", action="store_true",
                   help="arms whose training finished but whose evaluation did not (a killed "
                        "session): evaluate and record them without training again")
    p.add_argument("--report", action="store_true",
                   help="only regenerate results.md and the plot from results.json")
    preset = p.parse_known_args()[0].preset
    if preset:
        p.set_defaults(**PRESETS[preset])
    a = p.parse_args()
    if a.report:
        write_reports(load_results(a.out / "results.json"), a.out)
        print((a.out / "results.md").read_text())
        return
    import segcl  # noqa: F401  (fail now, not after the first arm, when segcl is not installed)

    if a.then and a.then not in finetune_arms():
        raise SystemExit(f"Error: --then {a.then}: not a fine-tuning arm; choose from "
                         f"{', '.join(finetune_arms())}")

    a.out.mkdir(parents=True, exist_ok=True)
    results_path = a.out / "results.json"
    if a.holdout:  # the held-out sequence becomes val; arms are recorded as "ARM [holdout P]"
        a.data = str(holdout_dataset(Path(a.data), a.holdout, a.out / "runs"))
        a.tag = " ".join(t for t in (a.tag, f"holdout {a.holdout}") if t)
    jobs = [(f, m, int(sd)) for f in (float(x) for x in a.fractions.split(","))
            for sd in a.seeds.split(",") for m in a.arms.split(",")]
    for frac, method, seed in jobs:
        a.seed = seed
        pretrains = method.partition(":")[0].removesuffix(PSEUDO_SUFFIX) in pretrain_arms()
        pre = f" ({a.pretrain_steps} pre-training steps)" if a.pretrain_steps and pretrains \
            else ""
        then = f" then {a.then}" if a.then and pretrains else ""
        arm = f"{method}{pre}{then}" + (f" [{a.tag}]" if a.tag else "")
        key = (arm, frac, seed, a.budget)
        done = [r for r in load_results(results_path) if _key(r) == key]
        if done and not a.force:
            print(f"skip {arm} @ {frac} seed {seed}: already measured "
                  f"({done[0]['miou'] * 100:.1f})")
            continue
        name = f"{method}{f'-pre{a.pretrain_steps}' if pre else ''}"
        name += f"-then-{a.then}" if then else ""
        name = f"{name}-{a.tag.replace(' ', '-')}" if a.tag else name
        work = a.out / "runs" / f"{name}@{frac}-{a.budget}steps" / f"seed{seed}"
        commands, model_dir = arm_commands(method, frac, a, work)
        log: list[str] = []
        if a.reevaluate and _trained(model_dir, a.budget):
            # training finished but its evaluation did not (a killed session): keep the run,
            # its wall time from its files (first config.yaml written -> last checkpoint)
            log += ["segcl " + " ".join(shlex.quote(x) for x in cmd) for cmd in commands]
            minutes = _trained(model_dir, a.budget) / 60
            machine = None  # trained in an earlier session, perhaps on another machine
            pre_minutes = None
            print(f"re-evaluating {arm} @ {frac} seed {seed}: trained in {minutes:.1f} min")
        else:
            if work.exists():
                shutil.rmtree(work)
            t0, pre_minutes = time.time(), 0.0
            for cmd in commands:
                start = time.time()
                run(cmd, log)
                if cmd[0] == "pretrain":
                    pre_minutes += (time.time() - start) / 60
            minutes = (time.time() - t0) / 60
            machine = machine_id()
        evals = {}
        for which in ("best", "last"):  # val-selected and final checkpoint
            eval_json = work / f"eval_{which}.json"
            run(["evaluate", str(model_dir / which), a.data, "--layout", a.layout, "--json",
                 str(eval_json), "--quiet"], log)
            evals[which] = json.loads(eval_json.read_text())
        metrics, final = evals["best"], evals["last"]
        train_cfg = json.loads((model_dir / "best" / "config.json").read_text())
        n_labeled = _labeled_images(train_cfg)
        record = {"arm": arm, "fraction": frac, "labeled_images": n_labeled,
                  "miou": metrics["miou"], "miou_final": final["miou"],
                  "pixel_accuracy": metrics["pixel_accuracy"],
                  "iou": metrics.get("iou"), "iou_final": final.get("iou"),
                  "classes": metrics.get("class_names"),
                  "minutes": round(minutes, 2), "machine": machine,
                  "pretrain_minutes": None if pre_minutes is None else round(pre_minutes, 2),
                  "budget_steps": a.budget,
                  "image_size": a.image_size, "seed": seed, "commands": log}
        # read the file again: another invocation may have added arms since this one began
        results = [r for r in load_results(results_path) if _key(r) != key] + [record]
        tmp = results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(results_path)
        write_reports(results, a.out)
        print(f"{arm} @ {frac} seed {seed}: val mIoU {metrics['miou'] * 100:.2f} (final "
              f"{final['miou'] * 100:.2f}) in {minutes:.1f} min")
    print((a.out / "results.md").read_text() if (a.out / "results.md").exists() else "")


def holdout_dataset(data: Path, prefix: str, out: Path) -> Path:
    """A cross-sequence check: ``train`` without the images whose name starts with ``prefix``,
    ``val`` = those images (e.g. CamVid's sequence 0001TP), as symlinks under ``out``.

    The models of such a run never see the held-out sequence, labelled or not, so its val mIoU
    measures generalisation to an unseen scene (the CamVid val split shares its sequence with
    a third of the training images)."""
    root = out / f"holdout-{prefix}"
    for split in ("train", "val"):
        for kind in ("images", "masks"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
    moved = 0
    for image in sorted((data / "train" / "images").iterdir()):
        split = "val" if image.name.startswith(prefix) else "train"
        moved += split == "val"
        mask = data / "train" / "masks" / f"{image.stem}.png"
        for src, kind in ((image, "images"), (mask, "masks")):
            link = root / split / kind / src.name
            if not link.exists():
                link.symlink_to(src.resolve())
    if not moved:
        raise SystemExit(f"--holdout {prefix}: no training image name starts with it")
    return root


def _trained(model_dir: Path, budget: int) -> float:
    """Seconds the run in ``model_dir`` trained for, from its files (the first ``config.yaml``
    of the arm's run folders -> its final ``last/`` checkpoint); 0 when it did not finish (its
    metrics do not reach the steps of its config.yaml)."""
    import yaml

    metrics, config = model_dir / "metrics.jsonl", model_dir / "config.yaml"
    if not (model_dir / "last").is_dir() or not metrics.is_file() or not config.is_file():
        return 0.0
    steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line]
    if max(steps, default=0) < int(yaml.safe_load(config.read_text())["steps"]):
        return 0.0
    start = min(c.stat().st_mtime for c in model_dir.parent.glob("*/config.yaml"))
    return max(1.0, (model_dir / "last").stat().st_mtime - start)


def _key(r: dict[str, Any]) -> tuple[str, float, int, int]:
    return r["arm"], r["fraction"], int(r.get("seed", 0)), int(r["budget_steps"])


def _row_order(kv: tuple[tuple[str, float, int], Any]) -> tuple[float, int, str]:
    """Table rows by fraction, then schedule, then arm."""
    arm, frac, steps = kv[0]
    return frac, steps, arm


def load_results(path: Path) -> list[dict[str, Any]]:
    """The arms measured so far (none when the file does not exist yet)."""
    return json.loads(path.read_text()) if path.exists() else []


def _labeled_images(config: dict[str, Any]) -> int:
    """Number of labelled training images of a run (recomputed from its data config)."""
    from segcl.config import DataConfig, from_dict
    from segcl.engine.data_setup import load_splits

    data = from_dict(DataConfig, config["train"]["data"])
    return len(load_splits(data, config["train"]["seed"], need_val=False,
                           validate=False).labeled)


if __name__ == "__main__":
    main()
