"""The CLI as a process, as users and batch systems run it: artifacts, resume after SIGKILL / Ctrl-C / SIGTERM
(through the SLURM script), exit codes 2 and 3 with one error line. In-process checks of the flags: test_cli.py.
A run whose process is not what a test checks (a reference, the resume after a stop) runs in the test's own process
(conftest's `cli_in_process`): the same command and environment, without a process start's imports and tracing."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import checkpoint_steps, cli_in_process

import sm_jax

ROOT = Path(__file__).resolve().parents[1]
# one xdist worker runs this module: its tests share the `finished` run
pytestmark = [pytest.mark.xdist_group("cli"), pytest.mark.slow]
TINY = ["--method", "dc", "--ipc", "2", "--preset", "cpu", "--width", "8", "--depth", "1", "--batch-real", "4",
        "--subset-batch-real", "3", "--outer-loop", "2", "--inner-loop", "1", "--eval-epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    cache = tmp_path_factory.mktemp("env")
    e.update(SM_JAX_CACHE=str(cache / "data"), SM_JAX_OFFLINE="1", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(ROOT))
    return e


def cli(env, *args, module="experiments.cifar10", timeout=600):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def popen(env, *args):
    return subprocess.Popen([sys.executable, "-m", "experiments.cifar10", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc, workdir, min_step, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        steps = checkpoint_steps(workdir)
        if steps and steps[-1] >= min_step:
            return steps[-1]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


def assert_one_line_error(res, pattern):
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    err = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and pattern in err[0], res.stderr[-2000:]


@pytest.fixture(scope="module")
def finished(env, tiny_archive, tmp_path_factory):
    """An uninterrupted run (in this process): the reference for resume and the source for evaluate."""
    wd = tmp_path_factory.mktemp("runs") / "ref"
    args = [*TINY, "--data-dir", tiny_archive, "--workdir", wd, "--iterations", 12, "--checkpoint-every", 3,
            "--eval-models", 2, "--eval-every", 6]
    code, out, err = cli_in_process(env, *args)
    assert code == 0, err[-3000:]
    return wd, json.loads(out.strip().splitlines()[-1])


def test_artifacts(finished):
    wd, summary = finished
    for name in ("config.json", "metrics.jsonl", "results.json", "synthetic.npz", "synthetic.png", "progress.png"):
        assert (wd / name).exists(), name
    syn = np.load(wd / "synthetic.npz")
    assert syn["images"].shape == (6, 32, 32, 3) and syn["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    assert syn["images"].min() >= 0 and syn["images"].max() <= 1
    res = json.loads((wd / "results.json").read_text())
    assert len(res["accuracies"]) == 2 and all(0 <= a <= 1 for a in res["accuracies"])
    assert res["accuracy_mean"] == pytest.approx(np.mean(res["accuracies"]))
    assert res["accuracy_mean"] == summary["accuracy_mean"]
    assert res["config"]["method"] == "dc" and "jax" in res["versions"] and res["data_source"].startswith("folder:")
    lines = [json.loads(ln) for ln in (wd / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss_all" in r]
    assert [r["iteration"] for r in steps] == list(range(1, 13))
    assert steps[0]["lambda"] == 1.0 and steps[-1]["lambda"] == pytest.approx(1 / 12)
    assert {"loss_subset", "grad_norm", "wall_time"} <= set(steps[0])
    assert json.loads((wd / "config.json").read_text())["subset_k"] == 2
    evals = [r["iteration"] for r in lines if "eval" in r]
    assert evals == [6, 12]


def read_until(proc, pattern, timeout=300):
    """Lines of proc's stdout up to the first holding `pattern`, read while the process runs."""
    import selectors

    lines, t0, sel = [], time.time(), selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while time.time() - t0 < timeout:
        if sel.select(timeout=1):
            line = proc.stdout.readline()
            assert line, ("the run ended first", lines, proc.communicate())
            lines.append(line)
            if pattern in line:
                return lines
    raise AssertionError(f"no line with {pattern!r} within {timeout} s: {lines}")


def saved_at(out):
    """The iteration a stopped run's message says it saved (0 without one)."""
    return int(out.split("saved a checkpoint at iteration")[1].split()[0]) if "saved a checkpoint" in out else 0


def metric_iterations(wd):
    path = wd / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(ln)["iteration"] for ln in lines if "loss_all" in ln]


@pytest.fixture(scope="module")
def interrupted(env, tiny_archive, tmp_path_factory):
    """The `finished` run's command stopped three ways, each resuming the last, then run to the end (4 processes):

    1. as a batch job: output to a pipe shows progress lines as the run goes; SIGTERM to the job script (SLURM's
       --signal=B:TERM) makes the run save and exit 143, and the script requeue the job;
    2. the requeued job (the same command) resumes and gets Ctrl-C after its next checkpoint: saves, exits 130;
    3. resumed again, killed without warning after a later checkpoint;
    4. the same command finishes it (in this process: its process is not what is tested).
    Returns (its workdir, what each phase showed).
    """
    tmp = tmp_path_factory.mktemp("interrupted")
    wd, bin_dir, seen = tmp / "run", tmp / "bin", {}
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp / "scontrol.args"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    job_env = {**env, "PATH": f"{bin_dir}:{env['PATH']}", "SLURM_JOB_ID": "4242", "PYTHON": sys.executable}
    args = [a for a in TINY if a != "--no-progress"] + [
        "--data-dir", tiny_archive, "--workdir", wd, "--iterations", 12, "--checkpoint-every", 3, "--eval-models", 0,
        "--log-every", 0]
    proc = subprocess.Popen(["bash", "experiments/slurm.sbatch", *map(str, args)], cwd=ROOT, env=job_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen["progress"] = read_until(proc, "iteration 4/12")  # progress reaches the pipe while the run is going
    proc.send_signal(signal.SIGTERM)  # to the job script only, as --signal=B:TERM does
    out, err = proc.communicate(timeout=120)
    requeue = tmp / "scontrol.args"
    seen["term"] = (proc.returncode, out, err, requeue.exists() and requeue.read_text().split(),
                    metric_iterations(wd), checkpoint_steps(wd))

    for stop, signum in (("int", signal.SIGINT), ("kill", signal.SIGKILL)):  # the requeued job: the same command
        proc = popen(env, *args)
        wait_for_checkpoint(proc, wd, saved_at(out) + 1)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
        seen[stop] = proc.returncode, out, err, checkpoint_steps(wd)
    seen["kill_results"] = (wd / "results.json").exists()

    seen["last"] = cli_in_process(env, *args)
    return wd, seen


def test_sigterm_through_the_slurm_script_saves_and_requeues(interrupted):
    wd, seen = interrupted
    code, out, err, scontrol, its, kept = seen["term"]
    assert any(ln.startswith("dc ipc2 iteration 1/12 | loss_all ") and "elapsed" in ln for ln in seen["progress"])
    assert any("s/it" in ln and "ETA" in ln for ln in seen["progress"]), seen["progress"]
    assert code == 143, err[-2000:]
    assert "stopped by SIGTERM: saved a checkpoint at iteration" in out, out
    assert saved_at(out) >= 4 and saved_at(out) in kept
    assert scontrol == ["requeue", "4242"]
    assert its == list(range(1, saved_at(out) + 1))


def test_the_requeued_job_resumes_and_saves_on_ctrl_c(interrupted):
    wd, seen = interrupted
    code, out, err, kept = seen["int"]
    assert code == 130, err[-2000:]
    assert f"resumed {wd} at iteration {saved_at(seen['term'][1])}" in out
    assert "stopped by SIGINT: saved a checkpoint at iteration" in out
    assert saved_at(out) > saved_at(seen["term"][1]) and saved_at(out) in kept


def test_resumed_after_sigterm_ctrl_c_and_sigkill_the_set_is_bit_identical(interrupted, finished):
    wd, seen = interrupted
    code, out, err = seen["last"]
    assert seen["kill"][0] == -signal.SIGKILL
    assert not seen["kill_results"]
    assert code == 0, err[-3000:]
    assert "resumed" in out
    ref, _ = finished
    np.testing.assert_array_equal(np.load(ref / "synthetic.npz")["images"], np.load(wd / "synthetic.npz")["images"])
    assert metric_iterations(wd) == list(range(1, 13))  # no metrics line lost or doubled


def test_sigterm_drops_a_long_iteration_to_save_within_the_grace_period(env, tiny_archive, tmp_path):
    """With iterations longer than --stop-grace, a stop saves the last finished iteration without waiting for the
    one in flight; resuming still gives the uninterrupted run's set."""
    args = [*TINY, "--data-dir", tiny_archive, "--outer-loop", 30, "--iterations", 2, "--checkpoint-every", 10,
            "--eval-models", 0, "--stop-grace", 0]
    code, _, err = cli_in_process(env, *args, "--workdir", tmp_path / "ref")
    assert code == 0, err[-3000:]
    seconds = [json.loads(ln)["seconds"] for ln in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert min(seconds[1:]) > 0.6, seconds  # long enough to be cut: the stop comes 0.3 s into iteration 2
    wd = tmp_path / "cut"
    proc = popen(env, *args, "--workdir", wd)
    while not (wd / "metrics.jsonl").exists() or not metric_iterations(wd):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.3)  # well inside iteration 2
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    # waiting for iteration 2 would have saved 2
    assert "stopped by SIGTERM: saved a checkpoint at iteration 1 " in out, out
    assert "the iteration in flight was dropped" in out
    assert metric_iterations(wd) == [1]
    code, _, err = cli_in_process(env, *args, "--workdir", wd)
    assert code == 0, err[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "ref" / "synthetic.npz")["images"],
                                  np.load(wd / "synthetic.npz")["images"])
    assert metric_iterations(wd) == [1, 2]


def test_divergence_stops_with_one_error_line_and_keeps_the_last_good_checkpoint(env, tiny_archive, tmp_path,
                                                                                  monkeypatch):
    wd = tmp_path / "diverged"
    res = cli(env, *TINY, "--data-dir", tiny_archive, "--workdir", wd, "--iterations", 6, "--checkpoint-every", 1,
              "--lr-img", 1e30)  # finite, but the next forward pass overflows
    assert res.returncode == 3, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "diverged at iteration" in err[0] and "not finite" not in err[0], res.stderr
    bad = int(err[0].split("diverged at iteration")[1].split(":")[0])
    good = checkpoint_steps(wd)
    assert good and max(good) == bad - 1, (good, bad)  # every finished iteration was good and saved
    assert f"the last good checkpoint is iteration {bad - 1}" in err[0]
    assert metric_iterations(wd) == list(range(1, bad))  # the diverged iteration is not logged
    for name in ("SM_JAX_CACHE", "SM_JAX_OFFLINE"):
        monkeypatch.setenv(name, env[name])
    ev = sm_jax.evaluate(wd, eval_models=1, eval_epochs=1, progress=False)  # the kept checkpoint restores
    assert ev["step"] == bad - 1


def test_bad_input_exits_2_with_one_error_line(env, tmp_path):
    """The exit-code contract of a real process (the messages themselves: test_cli.py)."""
    res = cli(env, "--method", "mct", "--ipc", 10, "--workdir", tmp_path / "w")
    assert_one_line_error(res, "unknown method")
    assert res.stdout == ""


def test_experiments_aggregate_every_network_and_resume_after_sigkill_in_the_second(env, tiny_archive, tmp_path):
    """--experiments 2: seeds 0 and 1 in exp0/ and exp1/, one results.json over 2 x 2 networks; killed without
    warning in the second experiment, the same command finishes it with the results of a run never stopped."""
    args = [*TINY, "--data-dir", tiny_archive, "--experiments", 2, "--iterations", 3, "--checkpoint-every", 1,
            "--eval-models", 2]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    code, out, err = cli_in_process(env, *args, "--workdir", whole)
    assert code == 0, err[-3000:]
    agg = json.loads((whole / "results.json").read_text())
    rows = [json.loads((whole / f"exp{i}" / "results.json").read_text()) for i in range(2)]
    assert [r["config"]["seed"] for r in rows] == [0, 1] and rows[0]["accuracies"] != rows[1]["accuracies"]
    every = rows[0]["accuracies"] + rows[1]["accuracies"]
    assert agg["accuracies"] == every and len(every) == 4
    assert agg["accuracy_mean"] == pytest.approx(sum(every) / 4)
    assert agg["accuracy_std"] == pytest.approx(float(np.std(every)))
    means = [sum(r["accuracies"]) / 2 for r in rows]
    assert agg["experiment_mean"] == pytest.approx(sum(means) / 2)
    assert agg["experiment_std"] == pytest.approx(abs(means[0] - means[1]) / 2)
    assert [e["seed"] for e in agg["experiments"]] == [0, 1] and (agg["done"], agg["planned"]) == (2, 2)
    for i, r in enumerate(rows):  # device time: the iterations' seconds and the evaluation's, from metrics.jsonl
        recs = [json.loads(ln) for ln in (whole / f"exp{i}" / "metrics.jsonl").read_text().splitlines()]
        its = [x["seconds"] for x in recs if "loss_all" in x]
        assert len(its) == 3 and r["device_seconds"] == pytest.approx(sum(its) + r["eval_seconds"])
    assert agg["device_seconds"] == pytest.approx(rows[0]["device_seconds"] + rows[1]["device_seconds"])
    assert json.loads(out.strip().splitlines()[-1])["accuracies"] == every

    proc = popen(env, *args, "--workdir", killed)
    wait_for_checkpoint(proc, killed / "exp1", 2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert (killed / "exp0" / "results.json").exists() and not (killed / "exp1" / "results.json").exists()
    assert json.loads((killed / "results.json").read_text())["done"] == 1  # the aggregate of what was done
    code, out, err = cli_in_process(env, *args, "--workdir", killed)
    assert code == 0, err[-3000:]
    assert "already finished" in out and "resumed" in out  # exp0 read back, exp1 resumed
    again = json.loads((killed / "results.json").read_text())
    assert again["accuracies"] == agg["accuracies"] and again["experiment_mean"] == agg["experiment_mean"]
    for i in range(2):
        a, b = np.load(whole / f"exp{i}" / "synthetic.npz"), np.load(killed / f"exp{i}" / "synthetic.npz")
        np.testing.assert_array_equal(a["images"], b["images"])
    from sm_jax.sets import load_set
    from sm_jax.sets.export import export_run

    export_run(whole, tmp_path / "sets", "npz")  # the run's N sets, exported like any run's
    for i in range(2):
        exported = load_set(tmp_path / "sets" / f"exp{i}")
        np.testing.assert_array_equal(exported.images, load_set(whole / f"exp{i}" / "synthetic.npz").images)
        assert json.loads((tmp_path / "sets" / f"exp{i}" / "metadata.json").read_text())["config"]["seed"] == i
