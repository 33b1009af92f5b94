"""The command line in-process (`condense_main(argv)`, `evaluate_main(argv)`): one-line errors with exit 2, the K
note, evaluating the initial set, checkpoints by wall time, evaluate on other architectures. The process-level
contract (signals, exit codes of a real process, the SLURM script) is tests/test_experiment.py's."""
import json

import numpy as np
import pytest

from sm_jax.cli.condense import condense_main
from sm_jax.cli.sets import evaluate_main

pytestmark = pytest.mark.xdist_group("cli_in_process")  # one worker: the module's tests share the `finished` run

TINY = ["--method", "dc", "--ipc", "2", "--preset", "cpu", "--width", "8", "--depth", "1", "--batch-real", "4",
        "--subset-batch-real", "3", "--outer-loop", "2", "--inner-loop", "1", "--eval-epochs", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("SM_JAX_OFFLINE", "1")
    monkeypatch.setenv("SM_JAX_CACHE", str(tmp_path / "cache"))


def run(main, argv, capsys, **kw):
    """(exit code, stdout, stderr) of a front end; 0 when it returns."""
    try:
        main([str(a) for a in argv], **kw)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(result, pattern):
    code, _, err = result
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and pattern in lines[0], err[-2000:]


def condense(argv, capsys):
    return run(condense_main, argv, capsys, dataset="cifar10")


@pytest.fixture(scope="module")
def finished(tiny_archive, tmp_path_factory):
    """A finished run of the flags below, shared by the module's tests (which copy it before changing it)."""
    from sm_jax.cli.condense import condense_parser, config_from_flags
    from sm_jax.experiment import Run

    wd = tmp_path_factory.mktemp("runs") / "ref"
    argv = [*TINY, "--data-dir", tiny_archive, "--workdir", wd, "--iterations", 2, "--checkpoint-every", 1,
            "--eval-models", 1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SM_JAX_OFFLINE", "1")
        mp.setenv("SM_JAX_CACHE", str(wd.parent / "cache"))
        cfg = config_from_flags(condense_parser("cifar10").parse_args([str(a) for a in argv]))
        return wd, Run(cfg, progress=False, log=lambda *a: None).execute()


@pytest.mark.parametrize("argv,pattern", [
    (["--method", "mct", "--ipc", 10], "unknown method 'mct'; choose one of dc, dsa, idc, dm, mtt"),
    (["--method", "dc", "--ipc", 0], "--ipc"),
    (["--method", "dc", "--ipc", 10, "--subset-k", 0], "--subset-k must be >= 1"),
    (["--method", "dc", "--ipc", 10, "--subset-k", 3], "does not divide"),
    (["--method", "idc", "--ipc", 1, "--subset-k", 3], "does not divide the per-class synthetic count (4 decoded"),
    (["--method", "dc", "--ipc", 10, "--iterations", -1], "--iterations must be >= 0"),
    (["--method", "dc", "--ipc", 10, "--eval-epochs", -5], "--eval-epochs must be >= 0"),
    (["--method", "dc", "--ipc", 10, "--syn-chunk", -5], "--syn-chunk must be auto, fused or >= 0, got -5"),
    (["--method", "dc", "--ipc", 10, "--syn-chunk", "half"], "expected auto, fused or an integer, got 'half'"),
    (["--method", "dc", "--ipc", 10, "--ipc", "x"], "invalid int value: 'x'"),
    (["--method", "dc", "--ipc", 10, "--norm", "spectral"], "unknown norm 'spectral'"),
    (["--method", "dc", "--ipc", 10, "--model", "resnet99"], "unknown model 'resnet99'"),
    (["--method", "dc", "--ipc", 10, "--eval-arch", "Q"], "unknown architecture 'Q'"),
    (["--method", "dc", "--ipc", 10, "--aug-drop", "warp"], "unknown augmentation op 'warp'"),
    (["--method", "dc", "--ipc", 10, "--class-chunk", "some"], "expected auto or an integer"),
    (["--method", "dc", "--ipc", 10, "--preset", "huge"], "unknown preset 'huge'"),
    (["--ipc", 10], "the following arguments are required: --method"),
    (["--method", "dc", "--ipc", 10, "--coordinator", "127.0.0.1:1"], "--num-processes, --process-id missing"),
    (["--method", "dc", "--ipc", 10, "--coordinator", "h:1", "--num-processes", 2, "--process-id", 2],
     "--process-id 2 is not in 0..1"),
    (["--method", "dc", "--ipc", 10, "--coordinator", "h:1", "--num-processes", 2, "--process-id", 0,
      "--peer-timeout", 0], "--peer-timeout must be positive"),
])
def test_bad_flags_are_one_error_line(argv, pattern, capsys, tmp_path):
    assert_one_line_error(condense([*argv, "--workdir", tmp_path / "w"], capsys), pattern)


def test_bad_data_and_workdir_are_one_error_line(tiny_archive, finished, tmp_path, capsys):
    w = ["--workdir", tmp_path / "w"]
    assert_one_line_error(condense(["--method", "dc", "--ipc", 2, "--data-dir", tmp_path / "missing.tgz", *w],
                                   capsys), "does not exist")
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(b"not an archive")
    assert_one_line_error(condense(["--method", "dc", "--ipc", 2, "--data-dir", corrupt, *w], capsys),
                          "corrupt.tar.gz")
    assert_one_line_error(condense(["--method", "dc", "--ipc", 2, *w], capsys), "pass --data-dir")
    wd, _ = finished  # a workdir holding another run's checkpoints
    res = condense([*TINY, "--subset-k", 1, "--data-dir", tiny_archive, "--workdir", wd, "--iterations", 2], capsys)
    assert_one_line_error(res, "holds another run (subset_k: 2 (recorded) vs 1 (now))")


def test_evaluate_errors_are_one_line(finished, tmp_path, capsys):
    import shutil

    wd, _ = finished
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run(evaluate_main, ["--workdir", empty], capsys), "no checkpoints")
    assert_one_line_error(run(evaluate_main, ["--workdir", tmp_path / "nowhere"], capsys), "not a directory")
    assert_one_line_error(run(evaluate_main, ["--workdir", wd, "--step", 7], capsys), "no checkpoint 7")
    assert_one_line_error(run(evaluate_main, ["--workdir", wd, "--eval-models", -1], capsys),
                          "--eval-models must be >= 0")
    assert_one_line_error(run(evaluate_main, ["--workdir", wd, "--eval-arch", "resnet99"], capsys),
                          "unknown architecture 'resnet99'")
    broken = tmp_path / "broken"
    shutil.copytree(wd, broken)
    for f in (broken / "checkpoints" / "2" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\0" * 7)
    assert_one_line_error(run(evaluate_main, ["--workdir", broken, "--eval-models", 1], capsys),
                          "cannot be restored")


def test_evaluate_roundtrip_and_other_architectures(finished, capsys):
    wd, summary = finished
    code, out, err = run(evaluate_main, ["--workdir", wd, "--eval-models", 1, "--eval-epochs", 1, "--no-progress"],
                         capsys)
    assert code == 0, err[-3000:]
    ev = json.loads(out.strip().splitlines()[-1])
    assert ev["step"] == 2 and ev["accuracies"] == summary["accuracies"]  # the run's own evaluation, again
    assert (wd / "eval_step2.json").exists()
    code, out, err = run(evaluate_main, ["--workdir", wd, "--eval-models", 1, "--eval-epochs", 1, "--eval-arch",
                                         "MLP,lenet", "--no-progress"], capsys)
    assert code == 0, err[-3000:]
    lines = out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines[-3:-1]] == ["mlp", "lenet"]  # one line per architecture
    ev = json.loads(lines[-1])
    assert list(ev["archs"]) == ["mlp", "lenet"] and ev["accuracies"] == ev["archs"]["mlp"]["accuracies"]
    assert all(len(r["accuracies"]) == 1 and r["eval_epochs"] == 1 for r in ev["archs"].values())
    res = json.loads((wd / "results.json").read_text())  # every architecture evaluated so far, the run's own too
    assert set(res["archs"]) == {"convnet", "mlp", "lenet"} and res["accuracies"] == summary["accuracies"]
    assert res["archs"]["mlp"]["accuracies"] == ev["archs"]["mlp"]["accuracies"] and res["archs"]["mlp"]["step"] == 2


@pytest.mark.torch
def test_export_then_evaluate_the_set(finished, tmp_path, capsys):
    """Each format exported with its metadata; --set on the npz and on the pt (the same float images) gives the run's
    own accuracies (same protocol, same network keys); the random baseline is reported beside it."""
    import shutil

    pytest.importorskip("torch")
    from sm_jax.cli.sets import export_main
    from sm_jax.sets import load_set

    wd, summary = finished
    for fmt in ("npz", "pt", "folder"):
        code, out, err = run(export_main, ["--workdir", wd, "--to", tmp_path / fmt, "--format", fmt], capsys)
        assert code == 0, err[-2000:]
        meta = json.loads((tmp_path / fmt / "metadata.json").read_text())
        names = np.load(wd / "synthetic.npz")["class_names"].tolist()
        assert meta["method"] == "dc" and meta["ipc_trained"] == 2 and meta["class_names"] == names
        assert meta["evaluations"][0]["accuracies"] == summary["accuracies"]
        assert meta["evaluations"][0]["protocol"]["epochs"] == 1 and meta["mean"][0] == pytest.approx(0.4914)
    assert_one_line_error(run(export_main, ["--workdir", wd, "--to", tmp_path / "npz", "--format", "npz"], capsys),
                          "is not empty")
    syn = np.load(wd / "synthetic.npz")
    np.testing.assert_array_equal(load_set(tmp_path / "npz").images.reshape(-1, 32, 32, 3), syn["train_normalized"])
    old = tmp_path / "old_run"  # a run saved before synthetic.npz held the exact images: export reads its checkpoint
    shutil.copytree(wd, old)
    np.savez(old / "synthetic.npz", **{k: syn[k] for k in ("images", "labels", "class_names")})
    assert run(export_main, ["--workdir", old, "--to", tmp_path / "old_npz", "--format", "npz"], capsys)[0] == 0
    np.testing.assert_array_equal(load_set(tmp_path / "old_npz").images.reshape(-1, 32, 32, 3),
                                  syn["train_normalized"])
    for fmt in ("npz", "pt"):
        code, out, err = run(evaluate_main, ["--set", tmp_path / fmt, "--no-progress"], capsys)
        assert code == 0, err[-3000:]
        ev = json.loads(out.strip().splitlines()[-1])
        assert ev["accuracies"] == summary["accuracies"], fmt
        assert json.loads((tmp_path / fmt / "results.json").read_text())["accuracies"] == summary["accuracies"]
    code, out, err = run(evaluate_main, ["--set", wd / "synthetic.npz", "--no-progress"], capsys)
    assert code == 0, err[-3000:]  # a run's own set: its config.json gives the protocol; its results.json is kept
    assert json.loads(out.strip().splitlines()[-1])["accuracies"] == summary["accuracies"]
    assert json.loads((wd / "set_results.json").read_text())["set"] == str(wd / "synthetic.npz")
    assert json.loads((wd / "results.json").read_text())["config"]["method"] == "dc"
    code, out, err = run(evaluate_main, ["--set", tmp_path / "folder", "--baseline", "random", "--eval-models", 2,
                                         "--no-progress"], capsys)
    assert code == 0, err[-3000:]
    assert "random real subset" in out
    ev = json.loads(out.strip().splitlines()[-1])
    assert len(ev["baseline"]["accuracies"]) == 2
    assert ev["difference"] == pytest.approx(ev["accuracy_mean"] - ev["baseline"]["accuracy_mean"])


def test_evaluate_set_errors_are_one_line(finished, tmp_path, capsys):
    wd, _ = finished
    assert_one_line_error(run(evaluate_main, ["--set", tmp_path / "nowhere"], capsys), "does not exist")
    np.savez(tmp_path / "bare.npz", images=np.zeros((4, 32, 32, 3), np.float32), labels=np.array([0, 0, 1, 1]))
    assert_one_line_error(run(evaluate_main, ["--set", tmp_path / "bare.npz"], capsys), "give --dataset")
    assert_one_line_error(run(evaluate_main, ["--set", tmp_path / "bare.npz", "--dataset", "cifar10"], capsys),
                          "give --method")
    assert_one_line_error(run(evaluate_main, ["--workdir", wd, "--method", "dc"], capsys), "applies to --set only")
    assert_one_line_error(run(evaluate_main, ["--workdir", wd, "--set", wd], capsys), "not allowed with")


def test_a_finished_run_is_not_redone_unless_its_evaluation_changes(tiny_archive, finished, tmp_path, capsys):
    import shutil

    wd, summary = finished
    wd = shutil.copytree(wd, tmp_path / "copy")
    argv = [*TINY, "--data-dir", tiny_archive, "--workdir", wd, "--iterations", 2, "--checkpoint-every", 1]
    code, out, _ = condense([*argv, "--eval-models", 1], capsys)
    assert code == 0 and "already finished" in out
    # ipc 2 has no loops of its own in the official DC code: said in one line and recorded
    note = "the official DC/DSA code defines no loops for ipc 2 (it stops there): ipc 10's taken"
    assert sum(note in ln for ln in out.splitlines()) == 1 and out.index(note) < out.index("already finished")
    assert note in json.loads((wd / "config.json").read_text())["preset_note"]
    code, out, _ = condense([*argv, "--eval-models", 2], capsys)  # a new evaluation of the same set
    assert code == 0 and "already finished" not in out
    assert json.loads(out.strip().splitlines()[-1])["accuracies"][:1] == summary["accuracies"]


def test_the_teacher_protocol_through_condense(tiny_archive, finished, tmp_path, capsys, monkeypatch):
    """`--eval-protocol teacher` on a finished run re-evaluates it: the real-data reference is trained once into
    SM_JAX_CACHE and the protocol recorded; a second evaluation reads the teacher back (no training line) and its
    first network gives the same accuracy."""
    import shutil

    from sm_jax.evaluation import reference

    monkeypatch.setitem(reference.BUDGETS, "cpu", {"models": 1, "epochs": 1, "per_class": 0, "holdout": 2})
    wd = shutil.copytree(finished[0], tmp_path / "copy")
    argv = [*TINY, "--data-dir", tiny_archive, "--workdir", wd, "--iterations", 2, "--checkpoint-every", 1,
            "--eval-protocol", "teacher"]
    code, out, err = condense([*argv, "--eval-models", 1], capsys)
    assert code == 0, err[-3000:]
    first = json.loads(out.strip().splitlines()[-1])
    refs = list((tmp_path / "cache" / "references").iterdir())
    assert len(refs) == 1 and (refs[0] / "accuracy.json").is_file() and "reference: 1 x convnet" in out
    assert json.loads((wd / "results.json").read_text())["eval_protocol"] == "teacher"
    code, out, err = condense([*argv, "--eval-models", 2], capsys)
    assert code == 0, err[-3000:]
    assert "reference:" not in out and "already finished" not in out
    assert json.loads(out.strip().splitlines()[-1])["accuracies"][:1] == first["accuracies"]


def test_subset_k_defaults_to_1_where_2_does_not_divide(tiny_archive, tmp_path, capsys):
    code, _, err = condense(["--method", "dc", "--ipc", 1, "--preset", "cpu", "--batch-real", 4, "--data-dir",
                             tiny_archive, "--iterations", 0, "--eval-models", 0, "--no-progress", "--workdir",
                             tmp_path / "k"], capsys)
    assert code == 0, err[-2000:]
    assert "note: --subset-k defaults to 1" in err
    assert json.loads((tmp_path / "k" / "config.json").read_text())["subset_k"] == 1


def test_iterations_zero_evaluates_the_initial_set(tiny_archive, tmp_path, capsys):
    wd = tmp_path / "init"
    code, out, err = condense([*TINY, "--data-dir", tiny_archive, "--workdir", wd, "--iterations", 0,
                               "--eval-models", 1], capsys)
    assert code == 0, err[-3000:]
    res = json.loads(out.strip().splitlines()[-1])
    assert res["iterations"] == 0 and len(res["accuracies"]) == 1
    assert [p.name for p in (wd / "checkpoints").iterdir() if p.name.isdigit()] == ["0"]


def test_checkpoints_by_wall_time(tiny_archive, tmp_path, capsys):
    """--checkpoint-minutes saves whenever that much time passed since the last save, with --checkpoint-every off."""
    def steps(minutes):
        wd = tmp_path / f"m{minutes}"
        code, _, err = condense([*TINY, "--data-dir", tiny_archive, "--workdir", wd, "--iterations", 3,
                                 "--eval-models", 0, "--checkpoint-every", 0, "--checkpoint-minutes", minutes], capsys)
        assert code == 0, err[-2000:]
        return sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())

    assert steps(0) == [0, 3]  # off: the initial state and the end only
    assert steps(1e-6) == [2, 3]  # due after every iteration (the manager keeps the last 2)


def test_artifacts_of_a_run(finished):
    wd, summary = finished
    for name in ("config.json", "metrics.jsonl", "results.json", "synthetic.npz", "synthetic.png", "progress.png"):
        assert (wd / name).exists(), name
    syn = np.load(wd / "synthetic.npz")
    assert syn["images"].shape == (6, 32, 32, 3) and syn["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    res = json.loads((wd / "results.json").read_text())
    assert res["accuracy_mean"] == summary["accuracy_mean"] and res["config"]["method"] == "dc"
    lines = [json.loads(ln) for ln in (wd / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss_all" in r]
    assert [r["iteration"] for r in steps] == [1, 2]
    assert steps[0]["lambda"] == 1.0 and steps[-1]["lambda"] == pytest.approx(0.5)


def test_python_api(finished, tiny_archive, tmp_path):
    """sm_jax.condense / evaluate / load_set: the command line's code, called from a notebook."""
    import sm_jax

    wd, summary = finished
    s = sm_jax.load_set(wd)  # a run directory: its synthetic.npz
    np.testing.assert_array_equal(s.images.reshape(-1, 32, 32, 3), np.load(wd / "synthetic.npz")["train_normalized"])
    assert sm_jax.evaluate(wd, eval_models=1, eval_epochs=1, progress=False)["accuracies"] == summary["accuracies"]
    res = sm_jax.condense("dc", 2, preset="cpu", width=8, depth=1, batch_real=4, iterations=0, eval_models=0,
                          data_dir=str(tiny_archive), workdir=str(tmp_path / "api"), progress=False)
    assert res["iterations"] == 0 and (tmp_path / "api" / "synthetic.npz").exists()


@pytest.mark.slow  # imports TensorFlow to read the files back as TensorBoard does
def test_tensorboard_event_files(finished):
    """The run's TensorBoard files hold metrics.jsonl's scalars and the synthetic grid at the evaluation."""
    tf = pytest.importorskip("tensorflow")
    wd, summary = finished
    scalars, images = {}, []
    for f in sorted((wd / "tensorboard").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for v in event.summary.value:
                if v.HasField("image"):
                    images.append((v.tag, event.step))
                else:
                    scalars.setdefault(v.tag, {})[event.step] = v.simple_value
    steps = [json.loads(ln) for ln in (wd / "metrics.jsonl").read_text().splitlines()]
    loss = {r["iteration"]: r["loss_all"] for r in steps if "loss_all" in r}
    assert scalars["condense/loss_all"] == pytest.approx(loss)
    assert set(scalars["condense/lambda"]) == {1, 2}
    assert scalars["eval/accuracy_mean"] == pytest.approx({2: summary["accuracy_mean"]})
    assert ("synthetic", 2) in images


def test_a_field_on_by_default_has_a_no_flag():
    from sm_jax.cli.condense import condense_parser, config_from_flags

    argv = ["--method", "dc", "--ipc", "1"]
    assert config_from_flags(condense_parser("cifar10").parse_args(argv)).tensorboard is True
    assert config_from_flags(condense_parser("cifar10").parse_args([*argv, "--no-tensorboard"])).tensorboard is False


@pytest.mark.torch
@pytest.mark.slow  # a process: the example is a script
def test_the_pytorch_example_trains_on_an_exported_folder(finished, tiny_archive, tmp_path, capsys):
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("torch")
    from sm_jax.cli.sets import export_main

    wd, _ = finished
    assert run(export_main, ["--workdir", wd, "--to", tmp_path / "f", "--format", "folder"], capsys)[0] == 0
    example = Path(__file__).parents[1] / "examples" / "train_torch.py"
    res = subprocess.run([sys.executable, str(example), "--set", str(tmp_path / "f"), "--test", str(tiny_archive),
                          "--models", "2", "--epochs", "2"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["train_images"] == 6 and out["test_images"] == 12 and len(out["accuracies"]) == 2
    assert all(0 <= a <= 1 for a in out["accuracies"])


def test_launcher_flags_and_process_environment(capsys, monkeypatch):
    from sm_jax import distributed
    from sm_jax.cli.launch import launch_main
    from sm_jax.launch import process_env

    assert_one_line_error(run(launch_main, ["--processes", 2, "--", "--method", "dc", "--process-id", 1], capsys),
                          "--process-id is the launcher's to set")
    assert_one_line_error(run(launch_main, ["--processes", 0, "--", "--method", "dc"], capsys), "must be positive")
    env = process_env(3, {"XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_other=1", "A": "b"})
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=3", "--xla_other=1"]
    assert (env["A"], env["JAX_PLATFORMS"]) == ("b", "cpu")
    for var in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.detected() is None and not distributed.initialize(distributed.Processes())
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # a one-task step is one process
    assert distributed.detected() is None
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert distributed.detected() == "Open MPI"
