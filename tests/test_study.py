"""Study runner: select-by-validation, skipping finished runs, resuming, and regenerated reports."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sm_jax import study
from sm_jax.errors import ConfigError

TINY = {"method": "dc", "ipc": 2, "preset": "cpu", "width": 8, "depth": 1, "batch_real": 4, "subset_batch_real": 2,
        "outer_loop": 1, "inner_loop": 1, "iterations": 1, "eval_epochs": 1, "eval_models": 2}


def write_plan(path, runs):
    path.write_text(json.dumps([{"id": i, "group": g, "flags": f} for i, g, f in runs]))
    return str(path)


def test_select_resolves_to_best_validation_group_and_skips_finished(tmp_path):
    plan = write_plan(tmp_path / "p.json", [
        ("v1", "val/l1", {**TINY, "subset_lambda": 0.5}),
        ("v2", "val/l2", {**TINY, "subset_lambda": 2.0}),
        ("t", "test", {**TINY, "subset_lambda": "select:val/"}),
    ])
    acc = {0.5: 0.3, 2.0: 0.6}
    calls = []

    def fake(cfg):
        from sm_jax import artifacts

        calls.append(cfg.subset_lambda)
        res = {"accuracy_mean": acc.get(cfg.subset_lambda, 0.1), "iterations": cfg.iterations,
               "config": json.loads(cfg.to_json())}
        Path(cfg.workdir).mkdir(parents=True)
        artifacts.write_json(f"{cfg.workdir}/results.json", res)
        return res

    out = study.run_plan(plan, tmp_path / "runs", tmp_path / "export", log=lambda s: None, execute=fake)
    assert calls == [0.5, 2.0, 2.0]  # the test run took the better validation lambda
    assert out["t"]["config"]["subset_lambda"] == 2.0
    assert (tmp_path / "export" / "p" / "t" / "results.json").exists()
    study.run_plan(plan, tmp_path / "runs", tmp_path / "export", log=lambda s: None, execute=fake)
    assert len(calls) == 3  # second pass: everything finished, nothing reruns
    # a fresh clone: no run directories, only the committed exports; nothing reruns either
    study.run_plan(plan, tmp_path / "fresh_runs", tmp_path / "export", log=lambda s: None, execute=fake)
    assert len(calls) == 3


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread only")
def test_a_stop_after_a_runs_last_check_stops_the_plan_before_its_next_run(tmp_path):
    """SIGTERM while a run writes its final files (it returns normally, as Run.execute does past its last check):
    the study saves that run and exits 143 before starting another, instead of going on until it is killed."""
    from sm_jax import artifacts
    from sm_jax.lifecycle import Stopped, StopSignals

    plan = write_plan(tmp_path / "p.json", [(i, "g", {**TINY, "seed": n}) for n, i in enumerate("abc")])
    calls = []

    def fake(cfg, signal_at_end=True):
        with StopSignals():  # the run's own block
            calls.append(cfg.seed)
            res = {"accuracy_mean": 0.5, "iterations": cfg.iterations, "config": json.loads(cfg.to_json())}
            Path(cfg.workdir).mkdir(parents=True)
            artifacts.write_json(f"{cfg.workdir}/results.json", res)
            if signal_at_end and len(calls) == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # would end the process, were no block installed
                time.sleep(0.05)
        return res

    kw = dict(root=tmp_path / "runs", export=tmp_path / "export", log=lambda s: None)
    with pytest.raises(Stopped, match="before run b \\(1 of 3 done\\)") as e:
        study.run_plan(plan, execute=fake, **kw)
    assert e.value.code == 143 and calls == [0]
    assert (tmp_path / "export" / "p" / "a" / "results.json").exists()  # the finished run is kept and exported
    out = study.run_plan(plan, execute=lambda c: fake(c, False), **kw)  # the rerun goes on from run b
    assert calls == [0, 1, 2] and set(out) == {"a", "b", "c"}


def test_select_refuses_unfinished_group():
    specs = [study.RunSpec("a", "val/x", {}), study.RunSpec("b", "t", {"subset_lambda": "select:val/"})]
    with pytest.raises(ConfigError, match="unfinished: a"):
        study.resolve(specs[1], specs, {})


def test_unknown_plan_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown plan"):
        study.load_plan("nope")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not a plan"):
        study.load_plan(str(tmp_path / "bad.json"))


def test_builtin_plans_build_valid_configs():
    for name in study.PLANS:
        specs = study.load_plan(name)
        assert specs
        for s in specs:
            resolved = {k: 1.0 for k, v in s.flags.items()
                        if isinstance(v, str) and v.startswith((study.SELECT, study.SELECT_FROM))}
            cfg = s.config(Path("w"), None, resolved)
            assert cfg.method == s.flags["method"]
    table = study.load_plan("table")
    seeds = {s.flags["seed"] for s in table if s.group.endswith("/sm")}
    assert len(seeds) >= 3 and all(s.flags["eval_models"] >= 5 for s in table if "/val/" not in s.group)
    assert all(s.flags.get("holdout") for s in table if "/val/" in s.group)  # lambda is never chosen on test


def test_paired_tests_by_hand():
    from sm_jax.study.common import paired_tests

    # differences 1, 2, 3: mean 2, std 1, t = 2 / (1 / sqrt 3) = 3.4641; two-sided p with 2 degrees of freedom:
    # P(|T| > t) = 1 - t / sqrt(2 + t^2) = 1 - 3.4641 / sqrt(14) = 0.07418. Sign flips: of the 8 assignments only
    # all-plus and all-minus reach |mean| 2, so p = 2 / 8
    t, p, p_flip = paired_tests(np.array([1.0, 2.0, 3.0]))
    assert t == pytest.approx(2 * np.sqrt(3)) and p == pytest.approx(1 - 2 * np.sqrt(3) / np.sqrt(14))
    assert p_flip == 0.25
    # 1, -1, 2, 2: |sum| 4; sign flips reaching it: the two 2s alike and the 1s not both against them (3 of 4 ways)
    # -> 6 of 16
    assert paired_tests(np.array([1.0, -1.0, 2.0, 2.0]))[2] == 0.375
    # DC ipc 10's three seeds (docs/results.md before seeds 3 and 4): t 4.24 under the 4.30 a 5 % test needs
    t, p, _ = paired_tests(np.array([25.70 - 24.10, 23.61 - 22.11, 25.43 - 22.45]))
    assert t == pytest.approx(4.24, abs=0.01) and 0.05 < p < 0.052 and study.verdict(np.array([1.6, 1.5, 2.98])) \
        == "within noise"
    assert np.isnan(paired_tests(np.array([0.0, 0.0]))[0]) and paired_tests(np.array([2.0, 2.0]))[1] == 0.0


def test_verdict_and_table_report(tmp_path):
    assert study.verdict(np.array([1.0, 1.2, 0.9])) == "helped"
    assert study.verdict(np.array([-1.0, -1.2, -0.9])) == "hurt"
    assert study.verdict(np.array([1.0, -1.0, 0.1])) == "within noise"
    specs = study.load_plan("table")
    results = {}
    for s in specs:
        if s.group.startswith("dc10/"):
            lam = 1.0 if s.group.endswith("/sm") else s.flags.get("subset_lambda", 1.0)
            acc = {"dc10/base": 0.25, "dc10/sm": 0.27, "dc10/base_real3x": 0.28}.get(s.group, 0.2)
            results[s.id] = {"accuracy_mean": acc + 0.001 * s.flags["seed"],
                             "config": {**s.flags, "subset_lambda": lam}}
    md = study.PLANS['table'].report(specs, results, {}, tmp_path)
    row = [ln for ln in md.splitlines() if ln.startswith("| dc10")][0]
    assert "25.20 ± 0.16" in row and "27.20 ± 0.16" in row and "2.00 ± 0.00" in row and "helped" in row
    assert "| inf (0.000) | 0.062 |" in row  # equal gains: t infinite; 5 pairs' sign flips cannot go below 2 / 32
    ctrl = [ln for ln in md.split("Compute control")[1].splitlines() if ln.startswith("| dc10")][0]
    assert "28.20 ± 0.16" in ctrl and "-1.00 ± 0.00" in ctrl and "hurt" in ctrl  # SM minus the 3x-batch base
    assert all(s.flags["batch_real"] == 96 for s in specs if s.group == "dc10/base_real3x")
    assert (tmp_path / "table.png").exists()


@pytest.mark.slow
def test_study_end_to_end_resumes_a_run(tmp_path, tiny_archive):
    """Two tiny real runs through the CLI code path; a half-done run resumes to the same result."""
    plan = write_plan(tmp_path / "e2e.json", [("a", "g", {**TINY, "subset_k": 2, "iterations": 2})])
    kw = {"root": tmp_path / "runs", "export": tmp_path / "export", "data_dir": str(tiny_archive),
          "log": lambda s: None}
    ref = study.run_plan(plan, **kw)["a"]
    # simulate an interrupted sitting: keep only the iteration-1 state, as a crash after that checkpoint would
    import shutil

    from sm_jax.checkpointing import Checkpointer

    wd = tmp_path / "runs" / "e2e" / "a"
    ck = Checkpointer(wd)
    for step in ck.all_steps():
        if step > 1:
            shutil.rmtree(wd / "checkpoints" / str(step))
    ck.close()
    (wd / "results.json").unlink()
    again = study.run_plan(plan, **kw)["a"]
    assert again["accuracies"] == ref["accuracies"]
    md = study.report(plan, tmp_path / "export", tmp_path / "out")
    assert "1 of 1 runs finished" in md


def test_exported_runs_are_not_git_ignored():
    """The export is what `--report-only` rebuilds the docs from, so it must be committable."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    export = study.EXPORT
    res = subprocess.run(["git", "check-ignore", "-q", f"{export}/table/dc10_base_s0/results.json"], cwd=root)
    assert res.returncode == 1, f"{export} is git-ignored"  # 1: not ignored, 0: ignored


def test_k_and_loss_reports_from_hand_made_runs(tmp_path):
    """One seed: the accuracy is its networks' mean, and the spread shown is theirs (std, ddof 1)."""
    specs = study.load_plan("k")
    results = {s.id: {"accuracies": [0.30 + 0.01 * s.flags["subset_k"], 0.32 + 0.01 * s.flags["subset_k"]],
                      "accuracy_mean": 0.31 + 0.01 * s.flags["subset_k"],
                      "config": {**s.flags, "batch_real": 32, "subset_batch_real": 0}} for s in specs}
    md = study.PLANS['k'].report(specs, results, {}, tmp_path)
    row8 = [ln for ln in md.splitlines() if ln.startswith("| 8 |")][0]
    assert "39.00 (1 seed)" in row8 and f"| {100 * np.std([0.38, 0.40], ddof=1):.2f} |" in row8
    assert row8.endswith("| 288 |")  # 32 for the whole class + 8 subsets x 32
    assert [ln for ln in md.splitlines() if ln.startswith("| 1 |")][0].endswith("| 32 |")
    assert (tmp_path / "k_ablation.png").exists()
    specs = study.load_plan("loss")
    accs = {"dc10/base": [0.20, 0.24], "dc10/subset_only": [0.21, 0.23], "dc10/both": [0.22, 0.26]}
    metrics, results = {}, {}
    for s in specs:
        a = accs[s.group]
        metrics[s.id] = [{"iteration": it, "eval": {"accuracies": [x + 0.01 * it for x in a]}} for it in (2, 4, 6)]
        metrics[s.id].insert(1, {"iteration": 3, "loss_all": 1.0})  # step rows are ignored
        results[s.id] = {"accuracy_mean": np.mean(a) + 0.06}
    md = study.PLANS['loss'].report(specs, results, metrics, tmp_path)
    both = [ln for ln in md.splitlines() if ln.startswith("| both |")][0]
    assert "30.00 (1 seed)" in both and "2: 26.00, 4: 28.00, 6: 30.00" in both
    assert (tmp_path / "loss_ablation.png").exists()


def test_cpu_plan_runs_each_method_against_its_initial_set_and_reports_every_network(tmp_path):
    specs = study.load_plan("cpu")
    by_id = {s.id: s for s in specs}
    assert by_id["dc10_init"].flags["iterations"] == 0 and by_id["dc10_k2"].flags["subset_k"] == 2
    assert "mtt1_k2" not in by_id and {"dm10_init", "dm10_k2", "mtt1_init", "mtt1_k1"} <= set(by_id)
    results = {"mtt1_k1": {"accuracies": [0.25, 0.27, 0.29], "iterations": 60, "eval_epochs": 100, "eval_models": 3,
                           "learned": {"lr": 0.0054}, "condense_seconds_this_sitting": 100.4, "eval_seconds": 20.0,
                           "config": {"method": "mtt", "ipc": 1, "subset_k": 1}}}
    md = study.PLANS["cpu"].report(specs, results, {}, tmp_path)
    # mean 27.00, std over networks (ddof 0, as the runs' own lines) 1.63; wall 100.4 + 20.0
    assert md.splitlines()[-1] == ("| mtt1_k1 | mtt | 1 | 1 | 60 | 100 x 3 | 27.00 +- 1.63 | 25.00, 27.00, 29.00 | "
                                   "0.0054 | 120 |")


def test_arch_plan_recreates_the_table_sets_and_reports_per_architecture(tmp_path):
    """The arch plan's sets have the table plan's flags (so the same sets), its lambda_0 comes from the table plan's
    exported validation runs, and the report pairs base and subset matching per seed and architecture."""
    from sm_jax.study.arch import ARCH_EVAL

    arch = {s.id: s for s in study.load_plan("arch")}
    table = {s.id: s for s in study.load_plan("table")}
    assert len(arch) == 18 and list(arch)[:6] == ["dc10_base_s0", "dc10_sm_s0", "dsa10_base_s0", "dsa10_sm_s0",
                                                  "idc10_base_s0", "idc10_sm_s0"]
    for rid, spec in arch.items():
        extra = {"eval_arch", "eval_models", "eval_test_per_class", "subset_lambda"}
        assert {k: v for k, v in spec.flags.items() if k not in extra} == \
            {k: v for k, v in table[rid].flags.items() if k not in extra | {"eval_models"}}
    # lambda_0 from another plan's exported validation runs
    export = tmp_path / "export"
    for lam, acc in ((0.3, 0.2), (1.0, 0.25), (3.0, 0.3)):
        d = export / "table" / f"dc10_val_lambda{lam:g}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({"accuracy_mean": acc, "config": {"subset_lambda": lam}}))
    assert study.resolve(arch["dc10_sm_s0"], list(arch.values()), {}, export) == {"subset_lambda": 3.0}
    # the report: base 20/30 %, + SM 22/33 % on convnet for seeds 0 and 1 -> paired gains 2 and 3 points
    results = {}
    for seed, (b, m) in enumerate(((0.20, 0.22), (0.30, 0.33))):
        for rid, acc in ((f"dc10_base_s{seed}", b), (f"dc10_sm_s{seed}", m)):
            archs = {a: {"accuracy_mean": acc - 0.01 * i} for i, a in enumerate(ARCH_EVAL.split(","))}
            results[rid] = {"accuracy_mean": acc, "config": {"seed": seed}, "archs": archs}
    text = study.PLANS['arch'].report(list(arch.values()), results, {}, tmp_path)
    row = [ln for ln in text.splitlines() if ln.startswith("| dc10 | convnet |")][0]
    assert "| 25.00 ± 7.07 | 27.50 ± 7.78 | 2.50 ± 0.71 |" in row and row.endswith("| 0, 1 |")
    assert "all (pooled)" not in text  # one setting: nothing to pool
    # a second setting, DSA seed 0: base 40 %, + SM 39 % -> pooled convnet pairs (20, 22), (30, 33), (40, 39):
    # base 30 ± 10, SM 31.33 ± 8.62, gains 2, 3, -1 -> 1.33 ± 2.08, t = 1.33 / (2.08 / sqrt 3) = 1.11, p 0.383 (2
    # degrees of freedom); sign flips: |mean| >= 4/3 for (+, +, +), (+, +, -) and their negatives -> 4 / 8
    for rid, acc in (("dsa10_base_s0", 0.40), ("dsa10_sm_s0", 0.39)):
        archs = {a: {"accuracy_mean": acc - 0.01 * i} for i, a in enumerate(ARCH_EVAL.split(","))}
        results[rid] = {"accuracy_mean": acc, "config": {"seed": 0}, "archs": archs}
    text = study.PLANS['arch'].report(list(arch.values()), results, {}, tmp_path)
    row = [ln for ln in text.splitlines() if ln.startswith("| all (pooled) | convnet |")][0]
    assert row == ("| all (pooled) | convnet | 30.00 ± 10.00 | 31.33 ± 8.62 | 1.33 ± 2.08 | 1.11 (0.383) | 0.500 |"
                   " within noise | 3 pairs |")
    assert (tmp_path / "arch.png").exists()


def test_a_plan_may_set_any_field_and_a_bad_one_is_a_config_error(tmp_path):
    """Plans build configs with make_config: the dataset too; a bad value or field is one ConfigError line."""
    cfg = study.RunSpec("m", "g", {**TINY, "dataset": "mnist"}).config(tmp_path / "w", None, {})
    assert cfg.dataset == "mnist" and cfg.workdir == str(tmp_path / "w")
    for flags, msg in (({**TINY, "ipc": 0}, "--ipc"), ({**TINY, "widht": 8}, "unknown config field 'widht'")):
        plan = write_plan(tmp_path / "bad_run.json", [("r", "g", flags)])
        with pytest.raises(ConfigError, match=f"plan 'bad_run', run r: .*{msg}"):
            study.run_plan(plan, tmp_path / "runs", None, log=lambda s: None, execute=lambda c: {})


def test_dm_plan_chooses_lambda_on_held_out_data_and_reports(tmp_path):
    """The dm plan: lambda_0 from held-out runs only, base and + subsets paired per seed; the loss figure averages
    L_all over windows of the logged iterations."""
    from sm_jax.study import dm

    specs = study.load_plan("dm")
    val = [s for s in specs if "/val/" in s.group]
    assert val and all(s.flags.get("holdout") for s in val)
    assert all(s.flags["iterations"] >= 1000 and s.flags["method"] == "dm" for s in specs)
    sm = [s for s in specs if s.group == "dm10/sm"]
    assert [s.flags["subset_lambda"] for s in sm] == [f"{study.SELECT}dm10/val/"] * 3
    results, metrics = {}, {}
    for s in specs:
        if "/val/" in s.group:
            results[s.id] = {"accuracy_mean": 0.3 + 0.01 * s.flags["subset_lambda"], "config": s.flags}
            continue
        acc = {"dm10/base": 0.40, "dm10/sm": 0.41}[s.group] + 0.002 * s.flags["seed"] ** 2
        results[s.id] = {"accuracy_mean": acc, "config": {**s.flags, "subset_lambda": 3.0}}
        metrics[s.id] = [{"iteration": i, "loss_all": float(i)} for i in range(1, 2 * dm.SMOOTH + 8)]
    md = dm.report(specs, results, metrics, tmp_path)
    row = [ln for ln in md.splitlines() if ln.startswith("| dm10")][0]
    assert "40.33 ± 0.42" in row and "41.33 ± 0.42" in row and "1.00 ± 0.00" in row and "helped" in row
    assert "**3** (0.3: 30.30; 1: 31.00; 3: 33.00)" in row
    its, loss = dm.loss_curve(metrics["dm10_base_s0"])
    np.testing.assert_allclose(its, [dm.SMOOTH, 2 * dm.SMOOTH])
    np.testing.assert_allclose(loss, [(1 + dm.SMOOTH) / 2, (3 * dm.SMOOTH + 1) / 2])
    assert (tmp_path / "dm.png").exists() and (tmp_path / "dm_loss.png").exists()


@pytest.mark.slow
def test_a_pack_carries_a_half_done_study_to_a_new_root_that_finishes_it_as_if_never_stopped(tmp_path, tiny_archive):
    """A short-lived machine's study: run a (2 experiments) and run b, both stopped after iteration 1 of 2 (a's first
    experiment finished); packed, unpacked in a new root, continued: the results of a study never stopped."""
    import shutil
    import tarfile

    from sm_jax.checkpointing import Checkpointer

    plan = write_plan(tmp_path / "pk.json", [("a", "g", {**TINY, "iterations": 2, "experiments": 2}),
                                             ("b", "g", {**TINY, "iterations": 2, "seed": 5})])
    kw = {"export": None, "data_dir": str(tiny_archive), "log": lambda s: None}
    ref = study.run_plan(plan, root=tmp_path / "ref", **kw)
    first = tmp_path / "first"  # the same plan run again, as the first machine ran it (runs are deterministic)
    shutil.copytree(tmp_path / "ref", first)
    latest = {}
    for wd in (first / "pk" / "a" / "exp1", first / "pk" / "b"):  # as a stop before iteration 2 leaves them
        ck = Checkpointer(wd)
        steps = ck.all_steps()
        for step in steps:
            if step > 1:
                shutil.rmtree(wd / "checkpoints" / str(step))
        ck.close()
        latest[wd.name] = str(max(s for s in steps if s <= 1))
        (wd / "results.json").unlink()
    (first / "pk" / "a" / "results.json").unlink()
    assert any((first / "pk" / "b" / "tensorboard").iterdir())
    p = study.pack(first, [plan], tmp_path / "carry" / "study.tar.gz")
    assert p["runs"] == 4 and p["bytes"] > 0  # a (its aggregate), a/exp0, a/exp1, b
    with tarfile.open(p["path"]) as tf:
        names = tf.getnames()
    assert not [n for n in names if "tensorboard" in n]
    def packed_steps(run):
        return {n.split("/checkpoints/")[1].split("/")[0] for n in names if n.startswith(f"pk/{run}/checkpoints/")}

    assert packed_steps("a/exp0") == {"2"}  # the latest checkpoint only
    assert packed_steps("a/exp1") == {latest["exp1"]} and packed_steps("b") == {latest["b"]}
    later = tmp_path / "later"
    assert study.unpack(p["path"], later) == 4
    with pytest.raises(study.PackError, match="exists: unpack into a root without these runs"):
        study.unpack(p["path"], later)
    again = study.run_plan(plan, root=later, **kw)
    for run in ("a", "b"):
        assert again[run]["accuracies"] == ref[run]["accuracies"], run
    assert again["a"]["done"] == 2 and len(again["a"]["accuracies"]) == 4
    with pytest.raises(study.PackError, match="not a readable pack"):
        (tmp_path / "bad.tar.gz").write_bytes(b"not a tar")
        study.unpack(tmp_path / "bad.tar.gz", tmp_path / "x")


def test_full_plan_is_table_1_at_the_paper_budget_and_its_report_marks_partial_cells(tmp_path):
    specs = study.load_plan("full")
    assert "full" not in study.ALL and set(study.ALL) == set(study.PLANS) - {"full"}
    assert all(s.flags["preset"] == "paper" and s.flags["experiments"] == 5 for s in specs)
    ids = [s.id for s in specs]
    assert ids[:3] == ["dc1_base", "dsa1_base", "dc10_base"]  # cheapest first; no K = 2 at DC / DSA ipc 1
    assert {"idc1_sm", "dc10_sm", "dsa50_sm", "idc50_base"} <= set(ids) and "dc1_sm" not in ids
    assert all(s.flags["subset_k"] == (2 if s.id.endswith("_sm") else 1) for s in specs)
    done = {"accuracy_mean": 0.45, "accuracy_std": 0.005, "accuracies": [0.45] * 100, "done": 5, "planned": 5,
            "device_seconds": 5400.0}
    part = {"accuracy_mean": 0.5, "accuracy_std": 0.01, "accuracies": [0.5] * 40, "done": 2, "planned": 5,
            "device_seconds": 212.4}
    md = study.PLANS["full"].report(specs, {"dc10_base": done, "dc10_sm": part}, {}, tmp_path)
    row = next(ln for ln in md.splitlines() if ln.startswith("| DC | 10 |"))
    assert "45.00 ± 0.50 (100 nets)" in row and "44.3 ± 0.5" in row and "44.6 ± 0.6" in row
    assert "50.00 ± 1.00 (40 nets) (**2/5 experiments so far**)" in row and row.endswith("| 1.50 h; 212 s |")
    assert "not run" in next(ln for ln in md.splitlines() if ln.startswith("| IDC | 50 |"))
    assert "28.3" in next(ln for ln in md.splitlines() if ln.startswith("| DC | 1 |"))


def test_set_overrides_every_run_of_a_plan_and_refuses_a_bad_one(tmp_path, capsys):
    from sm_jax.cli.study import _override, study_main

    assert _override("eval-models=3") == ("eval_models", 3) and _override("preset=cpu") == ("preset", "cpu")
    assert _override("subset_lambda=0.5") == ("subset_lambda", 0.5)
    plan = write_plan(tmp_path / "p.json", [("a", "g", {**TINY, "iterations": 5}), ("b", "g", {**TINY, "seed": 2})])
    seen = []

    def fake(cfg):
        seen.append((cfg.iterations, cfg.eval_models, cfg.seed))
        return {"accuracy_mean": 0.1}

    study.run_plan(plan, tmp_path / "runs", None, log=lambda s: None, execute=fake,
                   overrides={"iterations": 2, "eval_models": 3})
    assert seen == [(2, 3, 0), (2, 3, 2)]  # over the plan's own values; the rest kept
    for bad, msg in ((["--set", "iterations"], "is not FIELD=VALUE"), (["--set", "nonsense=1"], "nonsense")):
        with pytest.raises(SystemExit) as e:
            study_main(["--plan", plan, "--root", str(tmp_path / "r2"), "--export", str(tmp_path / "e"), *bad])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert msg in err[-1] and "Traceback" not in "\n".join(err), err
