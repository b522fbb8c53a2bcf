"""Bad option values and combinations: exit status 2, one line naming the option, nothing written.

Every value is checked before any work starts (most before torch is even imported: every choice
option, see CHOICES); the few options checked by their owner when it is first used (a teacher
model, a checkpoint, the dataset folder) still leave no run folder behind.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.faults.checks import TRAIN, case, expect

#: how each command is called when its own options are fine
COMMANDS = {
    "finetune": ["finetune", "{data}", *TRAIN, "--out", "run"],
    "pretrain": ["pretrain", "{data}", *TRAIN, "--out", "run"],
    "evaluate": ["evaluate", "{run}", "{data}", "--workers", "0", "--quiet"],
    "predict": ["predict", "{run}", "{data}/val/images", "--out", "pred", "--quiet"],
    "export": ["export", "{run}", "--out", "model.onnx", "--quiet"],
    "demo": ["demo", "--encoder", "test_resnet", "--steps", "1", "--out", "demo", "--quiet"],
    "hub-build": ["hub", "build", "camvid-resnet18-unet-1of8-quick", "--data", "{data}"],
    "evaluate-on": ["evaluate", "{run}", "--workers", "0", "--quiet"],  # + the dataset folder
    "predict-on": ["predict", "{run}", "--out", "pred", "--quiet"],  # + the inputs
}
LONG = "n" * 300  # a file name longer than the file system takes

#: command, the bad options (the last value of a flag wins), what the message must name
CASES = [
    ("finetune", "--batch-size 0", ["--batch-size"]),
    ("finetune", "--out ''", ["after --out"]),  # an unset shell variable: not the working dir
    ("predict", "--out=", ["--out", "empty"]),
    ("predict-on", "''", ["argument", "empty"]),
    ("finetune", "--batch-size -3", ["--batch-size"]),
    ("finetune", "--batch-size abc", ["--batch-size"]),
    ("pretrain", "--batch-size 0", ["--batch-size"]),
    ("evaluate", "--batch-size 0", ["--batch-size"]),
    ("predict", "--batch-size -3", ["--batch-size"]),
    ("finetune", "--workers -1", ["--workers"]),
    ("evaluate", "--workers -1", ["--workers"]),
    ("predict", "--threads 0", ["--threads"]),
    ("finetune", "--lr -1", ["--lr"]),
    ("finetune", "--lr nan", ["--lr", "nan"]),
    ("pretrain", "--lr inf", ["--lr", "inf"]),
    ("finetune", "--weight-decay -1", ["--weight-decay"]),
    ("finetune", "--warmup-steps -1", ["--warmup-steps"]),
    ("finetune", "--val-every 0", ["--val-every"]),
    ("finetune", "--steps 0", ["--steps"]),
    ("finetune", "--steps -5", ["--steps"]),
    ("pretrain", "--steps 0", ["--steps"]),
    ("finetune", "--epochs 0", ["--epochs"]),
    ("finetune", "--seed -1", ["--seed"]),
    ("pretrain", "--grid 0x0", ["--grid", "0x0"]),
    ("finetune", "--image-size 0x0", ["--image-size", "0x0"]),
    ("finetune", "--image-size abc", ["--image-size", "abc"]),
    ("pretrain", "--image-size 48x0", ["--image-size"]),
    ("finetune", "--labeled-fraction 0", ["--labeled-fraction"]),
    ("finetune", "--labeled-fraction 1.5", ["--labeled-fraction", "1.5"]),
    ("finetune", "--labeled-count 0", ["--labeled-count"]),
    ("finetune", "--labeled-fraction 0.5 --labeled-count 3",
     ["--labeled-fraction", "--labeled-count"]),
    ("export", "--check-count 0", ["--check-count"]),
    ("export", "--max-diff nan", ["--max-diff", "nan"]),
    ("finetune", "--semi-threshold 1", ["--semi-threshold"]),
    ("finetune", "--semi-threshold-momentum 1", ["--semi-threshold-momentum"]),
    ("finetune", "--unlabeled-batch-size 0", ["--unlabeled-batch-size"]),
    ("finetune", "--contrast-weight -1", ["--contrast-weight"]),
    ("pretrain", "--temperature 0", ["--temperature"]),
    ("finetune", "--checkpoint-every 0", ["--checkpoint-every"]),
    ("finetune", "--checkpoint-every abc", ["--checkpoint-every", "abc"]),
    ("pretrain", "--checkpoint-every 0s", ["--checkpoint-every"]),
    ("finetune", "--init-parts encoder", ["--init-parts", "--init"]),
    ("finetune", "--resume --overwrite", ["--resume", "--overwrite"]),
    ("finetune", "--no-such-flag", ["--no-such-flag"]),
    ("demo", "--steps 0", ["--steps"]),
    ("demo", "--labeled 0", ["--labeled"]),
    ("hub-build", "--tolerance -1", ["--tolerance"]),
]
#: choice options (one name from a list): an unknown name is refused as the options are parsed,
#: before torch is imported, by the config's one vocabulary check (segcl.config.CHOICES)
CHOICES = [
    ("finetune", "--decoder bogus", ["--decoder", "bogus", "segformer"]),
    ("pretrain", "--decoder bogus", ["--decoder", "bogus"]),
    ("finetune", "--layout bogus", ["--layout", "bogus", "cityscapes"]),
    ("pretrain", "--layout bogus", ["--layout", "bogus"]),
    ("evaluate", "--layout bogus", ["--layout", "bogus"]),
    ("finetune", "--mode bogus", ["--mode", "bogus", "slide"]),
    ("evaluate", "--mode bogus", ["--mode", "bogus"]),
    ("predict", "--mode bogus", ["--mode", "bogus"]),
    ("finetune", "--optimizer rmsprop", ["--optimizer", "rmsprop", "adamw"]),
    ("finetune", "--init-parts heads", ["--init-parts", "heads"]),
    ("finetune", "--loss hinge", ["--loss", "hinge"]),
    ("finetune", "--logger jsonl,bogus", ["--logger", "bogus"]),
    ("finetune", "--cache bogus", ["--cache", "bogus"]),
    ("finetune", "--contrast bogus", ["--contrast", "bogus"]),
    ("finetune", "--semi --semi-teacher bogus", ["--semi-teacher", "bogus"]),
    ("finetune", "--semi --semi-threshold-mode bogus", ["--semi-threshold-mode", "bogus"]),
    ("pretrain", "--method bogus", ["--method", "bogus", "supcon"]),
    ("pretrain", "--method semi", ["--method", "semi"]),  # a fine-tuning method
    ("pretrain", "--variant pairs", ["--variant", "pairs"]),
    ("pretrain", "--losses global,edge", ["--losses", "edge"]),
    ("evaluate", "--tta bogus", ["--tta", "bogus"]),
    ("predict", "--tta scales=9", ["--tta", "9"]),
]
#: a device name torch would not parse (whether it exists is checked when it is opened)
DEVICES = [(c, f"--device {d}", ["--device", d]) for c, d in
           [("finetune", "gpu"), ("pretrain", "cuda:x"), ("evaluate", "bogus"),
            ("predict", "cuda0"), ("demo", "tpu")]]
#: option combinations a pre-training method refuses (checked when PretrainConfig is built)
COMBINATIONS = [
    ("pretrain", "--method simclr --pseudo-labels teacher", ["--pseudo-labels", "simclr"]),
    ("pretrain", "--method multiscale --losses global --pseudo-labels teacher",
     ["--pseudo-labels", "pixel"]),
    ("pretrain", "--max-pixels 100", ["--max-pixels", "--variant batch"]),
]
#: options and paths checked by their owners when first used (after torch is imported;
#: --decoder after the dataset is listed): the run folder created meanwhile is removed again
LATE = [
    ("finetune", "--pseudo-labels no-teacher", ["no-teacher"]),
    ("finetune", "--init no-checkpoint", ["no-checkpoint"]),
    ("evaluate-on", "no-such-data", ["no-such-data"]),
    ("evaluate-on", LONG, [LONG, "File name too long"]),
    ("predict-on", "no-such-image.png", ["no-such-image.png"]),
    ("finetune", "--labeled-count 1000", ["--labeled-count", "1000"]),
]


@pytest.mark.parametrize("command, bad, names", [
    *(case(f"{c} {b}", c, b, n) for c, b, n in CASES),
    *(case(f"{c} {b.replace(LONG, 'LONG')}", c, b, n, slow=True) for c, b, n in LATE)])
def test_a_bad_option_is_refused(command: str, bad: str, names: list[str], synthetic_data: Path,
                                 tiny_run: Path, tmp_path: Path) -> None:
    args = [a.format(data=synthetic_data, run=tiny_run) for a in COMMANDS[command]]
    expect([*args, *shlex.split(bad)], tmp_path, [synthetic_data, tiny_run], names)


#: a line of ``python -X importtime`` (PYTHONPROFILEIMPORTTIME) for the top-level torch import
TORCH_IMPORT = re.compile(r"^import time:.*\|\s+torch$", re.MULTILINE)


@pytest.mark.parametrize("command, bad, names", [
    case(f"{c} {b}", c, b, n) for c, b, n in CHOICES + DEVICES + COMBINATIONS])
def test_an_unknown_choice_fails_before_torch_is_imported(
        command: str, bad: str, names: list[str], synthetic_data: Path, tiny_run: Path,
        tmp_path: Path) -> None:
    args = [a.format(data=synthetic_data, run=tiny_run) for a in COMMANDS[command]]
    proc = expect([*args, *shlex.split(bad)], tmp_path, [synthetic_data, tiny_run], names,
                  env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert re.search(r"\|\s+segcl\.cli$", proc.stderr, re.MULTILINE)  # imports were timed
    assert not TORCH_IMPORT.search(proc.stderr)  # ... and torch was not among them


@pytest.mark.parametrize("bad", ["--loss hinge", "--semi-threshold 1"])
def test_a_refused_option_leaves_the_run_it_would_overwrite(bad: str, synthetic_data: Path,
                                                           tiny_run: Path,
                                                           tmp_path: Path) -> None:
    """``--overwrite`` clears the old run only once the new options are accepted."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    args = [a.format(data=synthetic_data) for a in COMMANDS["finetune"]]
    expect([*args, "--overwrite", *shlex.split(bad)], tmp_path, [synthetic_data],
           bad.split()[:1])
    assert (run / "config.yaml").is_file() and (run / "best").is_dir()


def test_a_refused_method_combination_leaves_the_run_it_would_overwrite(
        synthetic_data: Path, tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    args = [a.format(data=synthetic_data) for a in COMMANDS["pretrain"]]
    expect([*args, "--overwrite", "--method", "simclr", "--pseudo-labels", "teacher"], tmp_path,
           [synthetic_data], ["--pseudo-labels"])
    assert (run / "config.yaml").is_file() and (run / "best").is_dir()
