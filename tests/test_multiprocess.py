"""Several processes as one run, for real: jax.distributed on this machine, 2 processes x 2 CPU devices joined by gloo
collectives, against 1 process x 4 devices (4 classes) and 1 device (3 classes). The processes are what is tested:
they run as subprocesses, through experiments.launch or started one by one as a batch system starts them (the
1-device reference, whose process is not tested, runs in the test's own). Each process start costs seconds of imports
and compilation on 2 cores, so one run goes through every interruption."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CPU_FLAGS, checkpoint_steps, cli_in_process, write_image_folder_archive

ROOT = Path(__file__).resolve().parents[1]
# one xdist worker runs the module: its 2-process runs never overlap (on 2 cores that costs both workers time)
pytestmark = [pytest.mark.xdist_group("multiprocess"), pytest.mark.slow]
PEER_TIMEOUT = 5  # seconds; the default (60) suits clusters
TINY = ["--method", "dc", "--ipc", "2", "--subset-k", "2", "--preset", "cpu", "--width", "8", "--depth", "1",
        "--batch-real", "4", "--subset-batch-real", "3", "--outer-loop", "2", "--inner-loop", "1", "--eval-epochs", "1",
        "--eval-models", "4", "--eval-parallel", "4", "--iterations", "6", "--checkpoint-every", "1", "--no-progress"]
# DC throughout: the placement is sharding.py's, shared by every method, and decided by the number of classes (DSA
# or IDC would only multiply the compile time of each of the eleven process starts). "even": 4 classes over 4
# devices, the state sharded by class. "uneven": 3 classes, the state replicated and the per-class work split with
# padding (as CIFAR-10's 10 classes over 4), the interruptions; not evaluated (evaluation across processes is
# checked on the even runs).
CASES = {"even": [], "uneven": ["--eval-models", "0"]}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ, SM_JAX_CACHE=str(tmp_path_factory.mktemp("env") / "data"), SM_JAX_OFFLINE="1",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), XLA_FLAGS=CPU_FLAGS)
    return e


@pytest.fixture(scope="module")
def archives(tiny_data, tiny_archive, tmp_path_factory):
    """case -> its data: 4 classes (a fourth added to the tiny set) and the tiny set's 3."""
    from sm_jax.data import Dataset

    d, rng = tiny_data, np.random.default_rng(1)
    four = Dataset(np.concatenate([d.train_x, rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)]),
                   np.concatenate([d.train_y, np.full(16, 3, np.int32)]),
                   np.concatenate([d.test_x, rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)]),
                   np.concatenate([d.test_y, np.full(4, 3, np.int32)]), (*d.class_names, "d"), "tiny4")
    return {"even": write_image_folder_archive(tmp_path_factory.mktemp("four") / "four.tar.gz", four),
            "uneven": tiny_archive}


def args_of(case, archives, wd, *more):
    return [*TINY, *CASES[case], "--data-dir", str(archives[case]), "--workdir", str(wd), *map(str, more)]


def launch(env, args, module=None, processes=2, devices=2, timeout=600):
    cmd = [sys.executable, "-m", "experiments.launch", "--processes", str(processes), "--devices-per-process",
           str(devices), *(["--module", module] if module else []), "--", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def one_process(env, args, devices):
    e = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {CPU_FLAGS}")
    return subprocess.run([sys.executable, "-m", "experiments.cifar10", *args, "--devices", str(devices)], cwd=ROOT,
                          env=e, capture_output=True, text=True, timeout=600)


def start_by_hand(env, args, slurm=False):
    """The 2 processes, started as mpirun would (explicit flags) or srun does (`slurm`: the environment of a 2-task
    job step on one node, which JAX's cluster detection reads); no launcher ends the others."""
    from sm_jax.launch import free_port, process_env

    port, procs = free_port(), []
    for i in range(2):
        e, flags = process_env(2, env), ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                         "--process-id", str(i)]
        if slurm:
            e.update(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2",
                     SLURM_PROCID=str(i), SLURM_LOCALID=str(i), JAX_COORDINATOR_PORT=str(port))
            flags = []
        procs.append(subprocess.Popen([sys.executable, "-m", "experiments.cifar10", *args, "--peer-timeout",
                                       str(PEER_TIMEOUT), *flags], cwd=ROOT, env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def wait_for_checkpoint(procs, wd, at_least, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if checkpoint_steps(wd) and checkpoint_steps(wd)[-1] >= at_least:
            return
        for p in procs:
            assert p.poll() is None, p.communicate()
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def synthetic(wd):
    return np.load(Path(wd) / "synthetic.npz")["train_normalized"]


def accuracies(wd):
    return json.loads((Path(wd) / "results.json").read_text())["accuracies"]


@pytest.fixture(scope="module")
def even(env, archives, tmp_path_factory):
    """4 classes over 2 processes x 2 devices (experiments.launch) with the real data on the host, and over 1 process
    x 4 devices with it on the devices: the two workdirs."""
    root = tmp_path_factory.mktemp("even")
    res = launch(env, args_of("even", archives, root / "2x2", "--peer-timeout", PEER_TIMEOUT, "--data-on", "host"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[0] {" in res.stdout and "[1] {" not in res.stdout  # the summary line comes from process 0 only
    res = one_process(env, args_of("even", archives, root / "1x4"), 4)
    assert res.returncode == 0, res.stderr[-3000:]
    return root / "2x2", root / "1x4"


@pytest.fixture(scope="module")
def uneven(env, archives, tmp_path_factory):
    """3 classes over 2 processes x 2 devices, interrupted twice, and uninterrupted on 1 device (in this process).

    The 2-process run: started by hand (explicit flags, as mpirun would), SIGTERM to both processes 0.3 s apart;
    the same command in the environment of a 2-task SLURM step (JAX's cluster detection), SIGKILL to process 1;
    then experiments.launch finishes it. Returns (its workdir, the 1-device workdir, what each phase showed).
    """
    root = tmp_path_factory.mktemp("uneven")
    wd, ref = root / "2x2", root / "1x1"
    code, _, err = cli_in_process(env, *args_of("uneven", archives, ref), "--devices", 1)
    assert code == 0, err[-3000:]
    args, seen = args_of("uneven", archives, wd), {}

    procs = start_by_hand(env, args)
    wait_for_checkpoint(procs, wd, 2)
    procs[0].send_signal(signal.SIGTERM)  # SLURM signals every task, not at the same instant
    time.sleep(0.3)
    procs[1].send_signal(signal.SIGTERM)
    seen["term"] = [(p.communicate(timeout=120), p.returncode) for p in procs]
    seen["term_steps"] = checkpoint_steps(wd)

    procs = start_by_hand(env, args, slurm=True)  # resumes; then process 1 is killed without warning
    wait_for_checkpoint(procs, wd, seen["term_steps"][-1] + 1)
    procs[1].kill()
    t0 = time.time()
    seen["kill"] = procs[0].communicate(timeout=120), procs[0].returncode
    seen["kill_seconds"] = time.time() - t0
    procs[1].communicate()
    seen["kill_results"] = (wd / "results.json").exists()

    seen["launch"] = launch(env, [*args, "--peer-timeout", str(PEER_TIMEOUT)])  # the same command finishes it
    return wd, ref, seen


def test_two_processes_give_the_set_and_accuracies_of_one_process(even):
    wd, ref = even
    # the same SPMD program over 4 devices; only the order of the cross-process sums differs (1 ulp)
    np.testing.assert_allclose(synthetic(wd), synthetic(ref), rtol=1e-5, atol=1e-5)
    # evaluation networks split over the 4 devices of 2 processes, against 4 devices of one process
    np.testing.assert_allclose(accuracies(wd), accuracies(ref), atol=1e-6)
    res = json.loads((wd / "results.json").read_text())
    assert (res["processes"], res["devices"], res["data_on"]) == (2, 4, "host")


def test_only_process_0_writes_the_run_files(even):
    wd, ref = even
    assert sorted(p.name for p in wd.iterdir()) == sorted(p.name for p in ref.iterdir())
    lines = (wd / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["iteration"] for ln in lines if "loss_all" in ln] == list(range(1, 7))  # one writer


def test_evaluate_across_processes_equals_one_process(env, even):
    wd, ref = even
    res = launch(env, ["--workdir", str(wd), "--no-progress", "--eval-models", "4", "--peer-timeout",
                       str(PEER_TIMEOUT)], module="experiments.evaluate")
    assert res.returncode == 0, res.stderr[-3000:]
    many = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("[0] {")][-1][4:])
    np.testing.assert_allclose(many["accuracies"], accuracies(wd), atol=1e-6)
    np.testing.assert_allclose(many["accuracies"], accuracies(ref), atol=1e-6)
    assert json.loads((wd / "results.json").read_text())["archs"]["convnet"]["step"] == 6  # merged by process 0


def test_sigterm_stops_both_processes_at_one_iteration(uneven):
    _, _, seen = uneven
    (out0, err0), code0 = seen["term"][0]
    (out1, err1), code1 = seen["term"][1]
    assert (code0, code1) == (143, 143), (err0[-2000:], err1[-2000:])
    assert "stopped by SIGTERM: saved a checkpoint at iteration" in out0
    assert "stopped by" not in out1  # one message, from process 0
    saved = int(out0.split("saved a checkpoint at iteration")[1].split()[0])
    assert seen["term_steps"][-1] == saved


def test_sigkill_to_one_process_ends_the_other_with_an_error_naming_it(uneven):
    _, _, seen = uneven
    (_, err), code = seen["kill"]
    assert code == 4, err[-2000:]
    assert seen["kill_seconds"] < PEER_TIMEOUT + 15
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "process 1 of 2 was lost" in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert not seen["kill_results"]


def test_resumed_over_two_processes_the_uneven_run_gives_the_one_device_set(uneven):
    wd, ref, seen = uneven
    res = seen["launch"]
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[0] resumed" in res.stdout and "[1] {" not in res.stdout  # lines from process 0 only
    # 4 devices against 1: float sums in another order. A resume that lost or repeated a random draw or an
    # optimiser step would differ by far more.
    np.testing.assert_allclose(synthetic(wd), synthetic(ref), rtol=1e-4, atol=1e-4)


def test_a_process_that_is_not_the_writer_writes_nothing_but_checkpoints(tiny_archive, tmp_path, monkeypatch):
    from sm_jax import distributed
    from sm_jax.cli.condense import condense_parser, config_from_flags
    from sm_jax.experiment import Run

    monkeypatch.setenv("SM_JAX_OFFLINE", "1")
    monkeypatch.setattr(distributed, "is_writer", lambda: False)
    # test_cli's tiny run (its compiled programs are in the session's cache)
    args = ["--method", "dc", "--ipc", "2", "--preset", "cpu", "--width", "8", "--depth", "1", "--batch-real", "4",
            "--subset-batch-real", "3", "--outer-loop", "2", "--inner-loop", "1", "--eval-epochs", "1", "--no-progress",
            "--data-dir", str(tiny_archive), "--workdir", str(tmp_path / "run"), "--iterations", "2",
            "--checkpoint-every", "1", "--eval-models", "1"]
    cfg = config_from_flags(condense_parser("cifar10").parse_args(args))
    Run(cfg, progress=False).execute()
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["checkpoints"]
