"""benchmarks/gpu.sh --smoke: the GPU check's every section on CPU at tiny shapes, so it cannot rot between the
sessions that are lent a GPU."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sm_jax.aot.targets import compiler_installed

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.torch
@pytest.mark.slow
def test_gpu_script_smoke_runs_every_section(tmp_path, tiny_archive):
    pytest.importorskip("torch")  # the baseline: .ci/run installs the extra .[torch]
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "SM_JAX_DATA": str(tiny_archive), "SM_JAX_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT), "PYTHON": sys.executable}
    res = subprocess.run(["bash", "benchmarks/gpu.sh", "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "exit " not in log and "skipped" not in log and log.rstrip().endswith("done"), log
    info = json.loads((out / "env.json").read_text())
    assert info["backend"] == "cpu" and info["jax"] and info["torch"]
    text = (out / "tests.txt").read_text()
    listed = re.findall(r"(tests/\w+\.py::\w+)", (ROOT / "benchmarks" / "gpu.sh").read_text())
    assert len(listed) >= 4 and all(f"{node}" in text for node in listed), text  # every test the GPU runs exists
    steps = [json.loads(ln) for ln in (out / "step.jsonl").read_text().splitlines()]
    assert [(s["config"]["method"], s["config"]["subset_k"]) for s in steps] == [("idc", 2)]
    for s in steps:
        assert s["torch_seconds_over_jax_seconds"] > 0 and s["compile_seconds"] > 0
        assert s["config"]["classes"] == 3 and s["config"]["class_chunk"] == 0 and s["precision"] == "float32"
        assert s["config"]["depth"] == s["torch"]["config"]["depth"] == 1  # the same network on both sides
        assert s["predicted_device_mb"] > 0
    ev = json.loads((out / "evaluate.jsonl").read_text())
    assert ev["vmapped_over_sequential"] > 0 and ev["config"]["models"] == 2
    report = json.loads((out / "gpu.json").read_text())  # what a GPU session commits
    assert report["steps"] == steps and report["evaluate"] == [ev] and report["env"]["backend"] == "cpu"
    assert report["runs"]["dsa_ipc1_k1"]["iterations_done"] == 2
    if compiler_installed("tpu") and compiler_installed("cuda"):  # .[aot]
        # section 1b: the prediction compiled for a target (h100 in the smoke run), with its memory and time
        [pred] = report["predicted"]
        assert (pred["target"], pred["method"], pred["preset"]) == ("h100", "dc", "cpu")
        assert pred["iteration"]["memory"]["total"] > 0 and pred["iteration"]["seconds"]["estimate"] > 0
    est = [e for e in report["estimates"] if e["source"] == "run dsa_ipc1_k1"]
    # 2 iterations of the smoke run, the first (compiling) left out: hours = total iterations x that one's seconds
    second = [json.loads(ln)["seconds"] for ln in (out / "runs" / "dsa_ipc1_k1" / "metrics.jsonl").read_text()
              .splitlines() if "loss_all" in ln][1]
    assert est and abs(est[0]["condense_gpu_hours"] - 2 * second / 3600) < 1e-9
    md = (out / "report.md").read_text()
    assert "PyTorch / JAX" in md and "vmapped / sequential" in md and "| dsa_ipc1_k1 | 2/2 |" in md
    run = out / "runs" / "dsa_ipc1_k1"
    its = [json.loads(ln)["iteration"] for ln in (run / "metrics.jsonl").read_text().splitlines() if "loss_all" in ln]
    assert its == [1, 2] and json.loads((run / "results.json").read_text())["config"]["subset_k"] == 1
