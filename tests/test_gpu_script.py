"""benchmarks/gpu.sh --smoke: the GPU check's every section on CPU at tiny shapes, so it cannot rot between the
sessions that are lent a GPU."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.torch
@pytest.mark.slow
def test_gpu_script_smoke_runs_every_section_and_returns_few_shallow_files(tmp_path, tiny_archive):
    """gpu.sh --smoke: every section on CPU, the full study at a tiny budget stopped by its time limit and packed;
    what a short-lived machine returns is at most 8 files, none more than two folders below OUT."""
    pytest.importorskip("torch")  # the baseline: .ci/run installs the extra .[torch]
    from sm_jax import study

    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "GPU_SH_WORK": str(work), "SM_JAX_DATA": str(tiny_archive),
           "SM_JAX_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT), "PYTHON": sys.executable}
    res = subprocess.run(["bash", "benchmarks/gpu.sh", "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files), files
    assert {p.name for p in files} == {"log.txt", "env.json", "gpu.json", "report.md", "study.tar.gz"}
    log = (out / "log.txt").read_text()
    assert "exit " not in log and "skipped" not in log and log.rstrip().endswith("done"), log[-3000:]
    assert "c. the study stopped at the time limit (every run saved)" in log or "c. the study finished" in log, \
        log[-3000:]
    info = json.loads((out / "env.json").read_text())
    assert info["backend"] == "cpu" and info["jax"] and info["torch"] and "nvidia_smi" in info
    listed = re.findall(r"(tests/\w+\.py::\w+)", (ROOT / "benchmarks" / "gpu.sh").read_text())
    assert len(listed) >= 4 and all(node in log for node in listed), log  # every test the GPU runs exists
    report = json.loads((out / "gpu.json").read_text())  # what a GPU session commits
    steps = report["steps"]
    assert [(s["config"]["method"], s["config"]["subset_k"]) for s in steps] == [("idc", 2)]
    for s in steps:
        assert s["torch_seconds_over_jax_seconds"] > 0 and s["compile_seconds"] > 0
        assert s["config"]["classes"] == 3 and s["config"]["class_chunk"] == 0 and s["precision"] == "float32"
        assert s["config"]["depth"] == s["torch"]["config"]["depth"] == 1  # the same network on both sides
        assert s["predicted_device_mb"] > 0
    [ev] = report["evaluate"]
    assert ev["vmapped_over_sequential"] > 0 and ev["config"]["models"] == 2 and report["env"]["backend"] == "cpu"
    # the study: the first cell's first experiment at least, run as the tiny budget says, and Table 1's layout
    first = report["runs"]["full/dc1_base/exp0"]
    assert (first["method"], first["ipc"], first["iterations_done"], first["iterations_total"]) == ("dc", 1, 2, 2)
    assert first["device_seconds"] > 0 and "| method | ipc | base (%) | paper |" in report["study"]["full"]
    md = (out / "report.md").read_text()
    assert "PyTorch / JAX" in md and "vmapped / sequential" in md and "| DC | 1 |" in md
    assert "| full/dc1_base/exp0 | 2/2 |" in md
    assert first["memory_ratio"] is None and "(bound 1.3)" in md  # a run's own memory check: no peak on CPU
    # the pack restores on a new machine: every run directory the study made, the first one finished
    made = {str(p.parent.relative_to(work / "study")) for p in (work / "study").rglob("config.json")}
    later = tmp_path / "later"
    assert study.unpack(out / "study.tar.gz", later) == len(made) and made
    assert json.loads((later / "full" / "dc1_base" / "exp0" / "results.json").read_text())["iterations"] == 2
    its = [json.loads(ln)["iteration"] for ln in (later / "full" / "dc1_base" / "exp0" / "metrics.jsonl")
           .read_text().splitlines() if "loss_all" in ln]
    assert its == [1, 2]
