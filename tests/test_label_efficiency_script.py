"""scripts/label_efficiency.py: its arms come from the method registry, and its report pairs
arms by seed (no training here)."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
from pathlib import Path

import pytest

from segcl import methods as registry
from tests.conftest import REPO


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location(
        "label_efficiency", REPO / "scripts" / "label_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(tmp_path: Path) -> argparse.Namespace:
    return argparse.Namespace(
        layout="camvid", image_size="96x128", encoder="resnet18", seed=0, batch_size=8,
        workers=1, data="DATA", finetune_lr=0.03, val_every=100, finetune_extra="",
        semi_extra="--semi-views 1", budget=100, pretrain_share=0.5, out=tmp_path,
        pretrain_lr=0.1, pretrain_extra="", grid=None, pretrain_steps=None, then="")


def test_arms_are_the_registered_methods(script, tmp_path) -> None:
    arms = script.finetune_arms()
    for name in registry.names("finetune"):
        method = registry.get(name)
        if not method.teacher:
            assert arms[name] == shlex.split(method.flag)
            commands, _ = script.arm_commands(name, 0.125, _args(tmp_path), tmp_path / name)
            assert len(commands) == 1 and commands[0][0] == "finetune"
    assert script.pretrain_arms() == registry.names("pretrain")
    for name in registry.names("pretrain"):
        commands, _ = script.arm_commands(name, 0.125, _args(tmp_path), tmp_path / name)
        assert [c[0] for c in commands] == ["pretrain", "finetune"]
        assert commands[0][commands[0].index("--method") + 1] == name
    with pytest.raises(SystemExit, match="unknown arm 'bogus'; choose from random"):
        script.arm_commands("bogus", 0.125, _args(tmp_path), tmp_path / "x")


def test_pretrain_steps_keep_the_whole_fine_tuning_budget(script, tmp_path) -> None:
    def steps(command: list[str]) -> int:
        return int(command[command.index("--steps") + 1])

    shared, _ = script.arm_commands("moco", 0.125, _args(tmp_path), tmp_path / "a")
    assert [steps(c) for c in shared] == [50, 50]  # --pretrain-share 0.5 of --budget 100
    extra = argparse.Namespace(**{**vars(_args(tmp_path)), "pretrain_steps": 300})
    on_top, _ = script.arm_commands("moco", 0.125, extra, tmp_path / "b")
    assert [steps(c) for c in on_top] == [300, 100]  # the random arm's schedule after it


def test_report_shows_the_pre_training_minutes(script, tmp_path) -> None:
    arm = "moco (300 pre-training steps) [ce+dice]"
    results = [_record("random [ce+dice]", 0, 0.50),
               {**_record(arm, 0, 0.52), "minutes": 30.0, "pretrain_minutes": 20.0}]
    script.write_reports(results, tmp_path)
    rows = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")
            for line in (tmp_path / "results.md").read_text().splitlines()
            if line.startswith("| ") and "0.125 (46 img)" in line}
    assert rows[arm][7] == "+2.00 (1 seed)"  # the same recipe without unlabelled images
    assert rows[arm][9:] == ["30.0", "20.0"] and rows["random [ce+dice]"][9:] == ["10.0", "-"]


def test_then_fine_tunes_the_pre_trained_model_as_a_fine_tuning_arm(script, tmp_path) -> None:
    args = argparse.Namespace(**{**vars(_args(tmp_path)), "then": "semi-ema"})
    (pre, fine), _ = script.arm_commands("moco", 0.125, args, tmp_path / "m")
    assert fine[fine.index("--init") + 1] == str(tmp_path / "m" / "pretrain")
    flags = [*script.finetune_arms()["semi-ema"], "--semi-views", "1"]  # with the semi extras
    start = fine.index(flags[0])
    assert fine[start:start + len(flags)] == flags
    assert "--semi" not in pre
    (alone,), _ = script.arm_commands("semi-ema", 0.125, args, tmp_path / "s")
    assert "--init" not in alone  # a fine-tuning arm itself is unchanged


def test_semi_adaptive_arm_is_the_mean_teacher_with_adaptive_thresholds(script, tmp_path) -> None:
    arms = script.finetune_arms()
    assert arms["semi-adaptive"] == [*arms["semi-ema"], "--semi-threshold-mode", "adaptive",
                                     "--semi-threshold-momentum", "0.99"]
    assert arms["semi-ema+contrast"] == [*arms["semi-ema"], "--contrast", "cross-image",
                                         "--contrast-warmup", "200"]
    commands, _ = script.arm_commands("semi-adaptive", 0.125, _args(tmp_path), tmp_path / "x")
    (command,) = commands
    assert command[command.index("--semi-threshold-mode") + 1] == "adaptive"
    assert "--semi-views" in command  # the semi arms' extra flags apply too


def _record(arm: str, seed: int, miou: float) -> dict:
    return {"arm": arm, "fraction": 0.125, "labeled_images": 46, "miou": miou,
            "miou_final": miou, "minutes": 10.0, "budget_steps": 100, "seed": seed}


def test_report_pairs_by_seed_and_by_recipe(script, tmp_path) -> None:
    results = [_record("random", 0, 0.50), _record("random", 1, 0.40),
               _record("random [ce+dice]", 0, 0.55), _record("random [ce+dice]", 1, 0.47),
               _record("semi [ce+dice]", 0, 0.56)]
    script.write_reports(results, tmp_path)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")
            for line in (tmp_path / "results.md").read_text().splitlines()
            if line.startswith("| ") and "0.125 (46 img)" in line}
    assert rows["random [ce+dice]"][6] == "6.00 ± 1.41 (2 seeds)"  # +5 and +7 over random
    assert rows["semi [ce+dice]"][6] == "+6.00 (1 seed)"
    assert rows["semi [ce+dice]"][7] == "+1.00 (1 seed)"  # over random [ce+dice], seed 0
    assert rows["random [ce+dice]"][7] == "-"


def test_report_compares_a_held_out_split_only_with_itself(script, tmp_path) -> None:
    """Arms validated on a held-out sequence (--holdout) pair with the random arm of that
    split, never with the val split's."""
    results = [_record("random", 0, 0.50), _record("random [holdout 0001TP]", 0, 0.20),
               _record("semi [holdout 0001TP]", 0, 0.23),
               _record("random [ce+dice holdout 0001TP]", 0, 0.22),
               _record("semi [ce+dice holdout 0001TP]", 0, 0.25)]
    script.write_reports(results, tmp_path)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")
            for line in (tmp_path / "results.md").read_text().splitlines()
            if line.startswith("| ") and "0.125 (46 img)" in line}
    assert rows["semi [holdout 0001TP]"][6] == "+3.00 (1 seed)"
    assert rows["semi [holdout 0001TP]"][8] == "+3.00 (vs random 100 steps, 1 seed)"
    assert rows["random [ce+dice holdout 0001TP]"][6] == "+2.00 (1 seed)"
    assert rows["semi [ce+dice holdout 0001TP]"][7] == "+3.00 (1 seed)"
    assert rows["random [holdout 0001TP]"][6] == "-"
    assert script._baseline("semi [ce+dice]") == "random"


def test_equal_compute_needs_the_same_machine_and_every_seed_in_time(script, tmp_path) -> None:
    """The equal-compute baseline is a random-init schedule that took no longer than the arm
    for every shared seed, timed on the same machine."""
    def timed(arm: str, seed: int, miou: float, minutes: float, machine: str | None) -> dict:
        return {**_record(arm, seed, miou), "minutes": minutes, "machine": machine}

    def cell(results: list[dict]) -> str:
        script.write_reports(results, tmp_path)
        row = next(line for line in (tmp_path / "results.md").read_text().splitlines()
                   if line.startswith("| semi |"))
        return row.split(" | ")[8]

    same = [timed("random", 0, 0.50, 10.0, "a"), timed("random", 1, 0.40, 10.0, "a")]
    assert cell([*same, timed("semi", 0, 0.52, 12.0, "a"), timed("semi", 1, 0.43, 12.0, "a")]) \
        == "2.50 ± 0.71 (vs random 100 steps, 2 seeds)"
    # the same runs with the baseline timed on another machine: no comparison
    other = [timed("random", 0, 0.50, 10.0, "b"), timed("random", 1, 0.40, 10.0, "b")]
    assert cell([*other, timed("semi", 0, 0.52, 12.0, "a"),
                 timed("semi", 1, 0.43, 12.0, "a")]) == "-"
    # one seed's baseline took more than 1.25x the arm's time: not an equal-compute baseline
    assert cell([*same, timed("semi", 0, 0.52, 12.0, "a"), timed("semi", 1, 0.43, 7.0, "a")]) \
        == "-"
    assert "cores" in script.machine_id()


def test_label_gap_per_recipe(script, tmp_path) -> None:
    """Each labels-only recipe measured with all labels gets its gap at every fraction."""
    full = {**_record("random [ce+dice]", 0, 0.70), "fraction": 1.0, "labeled_images": 367}
    results = [_record("random", 0, 0.50), _record("random [ce+dice]", 0, 0.55), full,
               _record("semi [ce+dice]", 0, 0.60)]
    script.write_reports(results, tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "| random [ce+dice] | 0.125 | 55.00 | 70.00 | 15.00 |" in text
    assert "| random | 0.125 |" not in text  # no all-label run of plain random init


def test_gain_plot_pairs_each_tagged_arm_with_its_recipe_by_seed(script, tmp_path) -> None:
    def rec(arm: str, frac: float, seed: int, miou: float) -> dict:
        return {**_record(arm, seed, miou), "fraction": frac, "labeled_images": int(frac * 368)}

    results = [rec("random [ce+dice]", f, s, 0.50) for f in (0.125, 0.25) for s in (0, 1)]
    results += [rec("semi-ema [ce+dice]", 0.125, 0, 0.52),
                rec("semi-ema [ce+dice]", 0.125, 1, 0.51),
                rec("semi-ema [ce+dice]", 0.25, 0, 0.49),  # seed 1 not measured at 1/4
                rec("semi [ce+dice]", 0.125, 0, 0.60)]  # one fraction: no line
    script.write_reports(results, tmp_path)
    assert (tmp_path / "gain_vs_labels.png").stat().st_size > 0
    groups: dict = {}
    for r in results:
        groups.setdefault((r["arm"], r["fraction"], r["budget_steps"]), []).append(r)
    gains = script._recipe_gains(script._longest_schedules(groups), groups)
    assert set(gains) == {"semi-ema [ce+dice]", "labels alone, same recipe"}
    (x1, m1, s1), (x2, m2, s2) = gains["semi-ema [ce+dice]"]
    assert (x1, x2) == (46, 92)
    assert m1 == pytest.approx(1.5) and s1 == pytest.approx(0.7071, abs=1e-3)
    assert m2 == pytest.approx(-1.0) and s2 == 0.0
