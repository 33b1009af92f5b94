"""Compiling for targets that are not here (sm_jax.aot): the cost arithmetic on a hand-written program, every method's
iteration and evaluation compiled for a CUDA target and a 2-chip TPU topology with the class axis sharded, and
`--plan-for` through the command line."""
import dataclasses
import json
import math
import re

import numpy as np
import pytest

from sm_jax.aot import hlo
from sm_jax.aot.targets import TARGETS, Target, TargetError, compiler_installed, target
from sm_jax.backend import FUSED

# A program whose flops and bytes are known by hand: a cuDNN convolution, a cuBLAS gemm, a fusion that slices a big
# operand, an in-place update, a loop with XLA:GPU's trip count and one with XLA:TPU's (none: `i < 5` from 0), a
# conditional and an all-reduce.
HLO = """HloModule hand, entry_computation_layout={()->f32[]}

%fused_slice (param_0: f32[1000,64], param_1: s32[]) -> f32[10,64] {
  %param_0 = f32[1000,64]{1,0} parameter(0)
  %param_1 = s32[] parameter(1)
  %zero = s32[] constant(0)
  ROOT %ds = f32[10,64]{1,0} dynamic-slice(%param_0, %param_1, %zero), dynamic_slice_sizes={10,64}
}

%fused_update (param_0.1: f32[1000,64], param_1.1: f32[10,64], param_2: s32[]) -> f32[1000,64] {
  %param_0.1 = f32[1000,64]{1,0} parameter(0)
  %param_1.1 = f32[10,64]{1,0} parameter(1)
  %param_2 = s32[] parameter(2)
  %zero.1 = s32[] constant(0)
  %neg = f32[10,64]{1,0} negate(%param_1.1)
  ROOT %dus = f32[1000,64]{1,0} dynamic-update-slice(%param_0.1, %neg, %param_2, %zero.1)
}

%body.gpu (p.1: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %p.1 = (s32[], f32[8,16]{1,0}) parameter(0)
  %a.1 = f32[8,16]{1,0} get-tuple-element(%p.1), index=1
  %b.1 = f32[16,16]{1,0} constant({...})
  %gemm = (f32[8,16]{1,0}, s8[4]{0}) custom-call(%a.1, %b.1), {gemm}
  %i.1 = s32[] get-tuple-element(%p.1), index=0
  ROOT %t.1 = (s32[], f32[8,16]{1,0}) tuple(%i.1, %a.1)
}

%cond.gpu (p.2: (s32[], f32[8,16])) -> pred[] {
  %p.2 = (s32[], f32[8,16]{1,0}) parameter(0)
  ROOT %never = pred[] constant(false)
}

%body.tpu (p.3: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p.3 = (s32[], f32[4]{0}) parameter(0)
  %v = f32[4]{0} get-tuple-element(%p.3), index=1
  %all-reduce.1 = f32[4]{0} all-reduce(%v), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  %i.3 = s32[] get-tuple-element(%p.3), index=0
  ROOT %t.3 = (s32[], f32[4]{0}) tuple(%i.3, %all-reduce.1)
}

%cond.tpu (p.4: (s32[], f32[4])) -> pred[] {
  %p.4 = (s32[], f32[4]{0}) parameter(0)
  %five = s32[] constant(5)
  %i.4 = s32[] get-tuple-element(%p.4), index=0
  ROOT %lt = pred[] compare(%i.4, %five), direction=LT
}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}

%small (q: f32[100]) -> f32[100] {
  %q = f32[100]{0} parameter(0)
  ROOT %c = f32[100]{0} copy(%q)
}

%big (r: f32[100]) -> f32[100] {
  %r = f32[100]{0} parameter(0)
  %e = f32[100]{0} exponential(%r)
  ROOT %c.2 = f32[100]{0} copy(%e)
}

ENTRY %main (x.1: f32[2,8,8,3], w.1: f32[3,3,3,4], big.1: f32[1000,64], i: s32[], flag: pred[]) -> f32[] {
  %x.1 = f32[2,8,8,3]{3,2,1,0} parameter(0)
  %w.1 = f32[3,3,3,4]{3,2,1,0} parameter(1)
  %big.1 = f32[1000,64]{1,0} parameter(2)
  %i = s32[] parameter(3)
  %flag = pred[] parameter(4)
  %conv = (f32[2,8,8,4]{3,2,1,0}, u8[0]{0}) custom-call(%x.1, %w.1), {conv}
  %rows = f32[10,64]{1,0} fusion(%big.1, %i), kind=kLoop, calls=%fused_slice
  %upd = f32[1000,64]{1,0} fusion(%big.1, %rows, %i), kind=kLoop, calls=%fused_update
  %zero.2 = s32[] constant(0)
  %m = f32[8,16]{1,0} constant({...})
  %init.gpu = (s32[], f32[8,16]{1,0}) tuple(%zero.2, %m)
  %loop.gpu = (s32[], f32[8,16]{1,0}) while(%init.gpu), condition=%cond.gpu, body=%body.gpu, {trip}
  %one = s32[] constant(1)
  %vec = f32[4]{0} constant({1, 2, 3, 4})
  %init.tpu = (s32[], f32[4]{0}) tuple(%one, %vec)
  %loop.tpu = (s32[], f32[4]{0}) while(%init.tpu), condition=%cond.tpu, body=%body.tpu
  %h = f32[100]{0} constant({...})
  %branch = f32[100]{0} conditional(%flag, %h, %h), true_computation=%small, false_computation=%big
  ROOT %out = f32[] constant(0)
}
"""
PARTS = {"{gemm}": 'custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"dot_dimension_numbers":'
                   '{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"]}}}',
         "{conv}": 'window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, '
                   'custom_call_target="__cudnn$convForward"',
         "{trip}": 'backend_config={"known_trip_count":{"n":"3"}}'}
for part, text in PARTS.items():
    HLO = HLO.replace(part, text)


def test_hlo_cost_of_a_hand_written_program():
    m = hlo.Module(HLO, peak_flops=1e9, bandwidth=1e6)
    # the convolution (3x3 SAME on 8x8): per image, output feature and input channel, 22 x 22 (output, tap) pairs meet
    # the input (per row 8 x 3, less the 2 taps on the padding), 2 flops each; reads x and w, writes its output
    conv_flops, conv_bytes = 2 * (2 * 4 * 3) * 22 * 22, 4 * (2 * 8 * 8 * 3 + 3 * 3 * 3 * 4 + 2 * 8 * 8 * 4)
    # the gemm (8x16 @ 16x16), 3 times: 2*8*16*16 flops; reads 8x16 + 16x16, writes 8x16 (+ 4 bytes of workspace)
    gemm_flops, gemm_bytes = 2 * 8 * 16 * 16, 4 * (8 * 16 + 16 * 16 + 8 * 16) + 4
    # the slice reads its 10 rows (not the 1000) and the index, writes 10 rows; the update reads and writes 10 rows
    slice_bytes = 4 * (10 * 64) + 4 + 4 * (10 * 64)
    update_bytes = 4 * (10 * 64) + 4 + 4 * (10 * 64)
    # the conditional: its dearer branch (the fusion-free `big`: exponential and copy, each 400 B in + 400 B out)
    branch_bytes = 2 * (400 + 400)
    c = m.cost()
    assert c.flops == conv_flops + 3 * gemm_flops
    assert c.bytes == conv_bytes + 3 * gemm_bytes + slice_bytes + update_bytes + branch_bytes
    assert c.kernels == 1 + 3 + 2 + 2
    assert c.collectives == {"all-reduce": [4, 4 * 16]}  # the TPU-style loop runs i = 1..4: 4 times
    expected = (max(conv_flops / 1e9, conv_bytes / 1e6) + 3 * max(gemm_flops / 1e9, gemm_bytes / 1e6)
                + (slice_bytes + update_bytes + branch_bytes) / 1e6)
    assert math.isclose(c.seconds, expected)
    loops = {i.name: m.trip_count(i) for comp in m.comps.values() for i in comp if i.op == "while"}
    assert loops == {"loop.gpu": 3, "loop.tpu": 4}
    assert c.loop_trips == 3 + 4 and c.grouped_flops == 0


GROUPED = """HloModule grouped

ENTRY %main (x: f32[2,8,8,6], w: f32[3,3,3,4], g: f32[3,3,6,4], a: f32[6,8,8,2], d: f32[4,8,8,1]) -> f32[2,8,8,4] {
  %x = f32[2,8,8,6]{3,2,1,0} parameter(0)
  %w = f32[3,3,3,4]{3,2,1,0} parameter(1)
  %g = f32[3,3,6,4]{3,2,1,0} parameter(2)
  %a = f32[6,8,8,2]{3,2,1,0} parameter(3)
  %d = f32[4,8,8,1]{3,2,1,0} parameter(4)
  %plain = (f32[2,8,8,4]{3,2,1,0}, u8[0]{0}) custom-call(%x, %g), {conv}
  %grouped = (f32[2,8,8,4]{3,2,1,0}, u8[0]{0}) custom-call(%x, %w), {conv}, feature_group_count=2
  %wgrad = (f32[6,3,3,4]{3,2,1,0}, u8[0]{0}) custom-call(%a, %d), {wide}, feature_group_count=2
  ROOT %out = f32[2,8,8,4]{3,2,1,0} get-tuple-element(%grouped), index=0
}
""".replace("{conv}", PARTS["{conv}"]).replace("{wide}", PARTS["{conv}"].replace("size=3x3", "size=8x8"))


def test_grouped_convolutions_are_counted_apart():
    # two 3x3 SAME convolutions of 6 -> 4 features on 2 images of 8x8; the grouped one (2 groups of 3 inputs) does
    # half the multiply-adds. Both grouped convolutions are counted as such; only the one over an image-sized
    # window (8x8: the form of a per-group kernel gradient, 3x3 outputs) is priced apart
    m = hlo.Module(GROUPED, peak_flops=1e9, bandwidth=1e6)
    plain = 2 * (2 * 4 * 6) * 22 * 22
    assert math.isclose(m.flops(m.by_name["plain"]) / 2, m.flops(m.by_name["grouped"])) and plain > 0
    assert math.isclose(m.flops(m.by_name["plain"]), plain)
    wgrad = m.flops(m.by_name["wgrad"])
    c = m.cost()
    assert wgrad > 0 and math.isclose(c.grouped_flops, wgrad) and math.isclose(c.flops, 1.5 * plain + wgrad)
    assert hlo.census(GROUPED) == {"__cudnn$convForward": 3, "grouped convolutions": 2}
    assert hlo.census(HLO)["__cublas$gemm"] == 1 and "grouped convolutions" not in hlo.census(HLO)


def test_convolution_flops_by_hand():
    # a 3x3 convolution of 16 -> 32 features on 4 images of 8x8: 2 * (4*8*8*32) * (3*3*16)
    assert hlo.conv_flops((4, 8, 8, 32), (3, 3, 16, 32), "b01f_01io->b01f") == 2 * 4 * 8 * 8 * 32 * 144
    # kernel stored output-major (o01i): the same count
    assert hlo.conv_flops((4, 8, 8, 32), (32, 3, 3, 16), "b01f_o01i->b01f") == 2 * 4 * 8 * 8 * 32 * 144
    # a 3x3 SAME convolution of an 8x8 input: per row, 8 outputs x 3 taps, of which the first and last output's
    # outer taps fall on the padding: 22 of 24 pairs meet values
    same = hlo.window_share("window={size=3x3 pad=1_1x1_1}", (4, 8, 8, 16), (4, 8, 8, 32), "b01f_01io->b01f")
    assert same == (22 / 24) ** 2
    # a gradient's convolution: a 16x16 window over a 3x3 input padded by 14 (16 outputs a row); input value x is
    # met by the outputs o = x + 14 - t, t < 16, in [0, 16): 15, 16 and 15 of them
    grad = hlo.window_share("window={size=16x16 pad=14_14x14_14}", (128, 3, 3, 20), (128, 16, 16, 20),
                            "b01f_o01i->b01f")
    assert grad == ((15 + 16 + 15) / 256) ** 2
    # XLA:TPU's class-batched form: a window of 10 over an input dilated by 10 meets one value per output
    tpu = hlo.window_share("window={size=1x1x10 stride=1x1x9 lhs_dilate=1x1x10}", (4, 8, 8, 10, 3),
                           (4, 8, 8, 10, 5), "b012f_012io->b012f")
    assert tpu == 0.1


def test_targets_resolve_by_name_and_chips():
    assert target("h100", 8).name == "h100x8" and target("v5e", 4).name == "v5e-2x2"
    assert target("v5e-4x4").chips == 16
    with pytest.raises(TargetError, match="unknown target 'h900'"):
        target("h900")
    with pytest.raises(TargetError, match="no target of 3 chips"):
        target("h100", 3)
    assert "core_count: 132" in TARGETS["h100"].gpu_target_config()


HAVE_CUDA, HAVE_TPU = compiler_installed("cuda"), compiler_installed("tpu")
def needs_compilers(test):
    """The test compiles for a GPU and a TPU: marked `aot` (what .ci/run's pass over the extras selects), skipped
    without the compilers."""
    skip = pytest.mark.skipif(not (HAVE_CUDA and HAVE_TPU), reason='needs pip install -e ".[aot]"')
    return pytest.mark.aot(skip(test))
TPU2 = dataclasses.replace(TARGETS["v5e-2x2"], name="v5e-2x1", chips=2, tpu=("v5e:2x1", (2, 1, 1)))
TINY = dict(width=8, depth=1, batch_real=4, batch_train=8, outer_loop=2, inner_loop=1, eval_epochs=2,
            eval_models=2, eval_parallel=2, max_syn_per_class=0)


def tiny_shapes(classes: int = 4, per_class: int = 16):
    from sm_jax.data import Dataset

    y = np.repeat(np.arange(classes), per_class).astype(np.int32)
    x = np.broadcast_to(np.zeros((1, 32, 32, 3), np.uint8), (len(y), 32, 32, 3))
    return Dataset(x, y, x[:8], y[:8], tuple("abcd"[:classes]), "shapes")


# The paper's programs at tiny shapes. GPU: DC with subsets (K 2: the whole-class term and the subset terms) on the
# batch-norm ConvNet, IDC with subsets (its decoding, per-class steps, real-data training with CutMix) and DM with
# subsets (DSA's augmentation ops, in its matching). TPU, the classes split over 2 chips: DC with subsets and DM.
# DSA is DC's matching with DM's augmentation, so its pieces are compiled for both; DSA's and IDC's TPU programs
# themselves, and every method's at the paper's shapes, are compiled by benchmarks.aot (benchmarks/results/
# aot.jsonl): the suite's 6 minutes do not hold them all. One evaluation program per target (DC's batch-norm
# protocol with its augmentation). XLA:TPU takes about 3x as long to compile float32 convolutions (6 bfloat16
# passes) as bfloat16 ones, 45 s for the smallest of these programs: the TPU programs here are compiled at
# --precision bfloat16 (the same operations, fewer passes).
GPU_CASES = [("dc", 2, 2, {"model": "convnetbn"}), ("idc", 1, 2, {"factor": 2}), ("dm", 2, 2, {})]
TPU_CASES = [("dc", 2, 2, {"precision": "bfloat16"}), ("dm", 2, 1, {"precision": "bfloat16"})]


def compile_cases(tgt: Target, cases) -> list:
    from sm_jax.aot import Compiler
    from sm_jax.config import make_config

    data, programs = tiny_shapes(), []
    for i, (method, ipc, k, extra) in enumerate(cases):
        cfg = make_config(method, ipc, "cpu", subset_k=k, **{**TINY, **extra})
        comp = Compiler(cfg, tgt, data)
        # `auto` resolves for the target, not for this CPU host
        assert comp.cfg.conv_impl == {"cuda": "xla_gemm", "tpu": "xla"}[tgt.platform]
        it = comp.iteration(0)  # all classes in one program: the vmapped form (`auto`'s choice is tested below)
        programs.append((cfg, it))
        if i == 0:
            programs.append((cfg, comp.evaluation()))
    for cfg, p in programs:
        assert p.memory is not None and p.memory["total"] > 0 and p.hlo_cost.flops > 0, (cfg.method, p.name)
        assert "f64[" not in p.text and "xla_python" not in p.text  # no float64, no host callbacks
    return programs


@pytest.mark.slow
@pytest.mark.xdist_group("aot_gpu")
@needs_compilers
def test_the_methods_compile_for_a_gpu_with_cudnn_convolutions():
    for cfg, p in compile_cases(TARGETS["h100"], GPU_CASES):
        # no XLA convolution left, no CPU form (Winograd einsums, fused RGB layer), and no grouped convolution:
        # the matching's convolutions are cuDNN's with its per-class kernel gradients as gemms, and the 2
        # evaluation networks trained together are gemms throughout
        kernels = hlo.census(p.text)
        assert not re.search(r" convolution\(", p.text), (cfg.method, p.name)
        assert "grouped convolutions" not in kernels, (cfg.method, p.name, kernels)
        if p.name == "iteration":
            assert kernels.get("__cudnn$convForward", 0) + kernels.get("__cudnn$convBiasActivationForward", 0), kernels


@pytest.mark.slow
@pytest.mark.xdist_group("aot_tpu")
@needs_compilers
def test_dc_and_dm_compile_for_a_two_chip_tpu_with_the_classes_split():
    for cfg, p in compile_cases(TPU2, TPU_CASES):
        if p.name == "iteration":  # each chip holds 2 of the 4 classes' stored images
            assert f"f32[2,{cfg.ipc},32,32,3]" in p_entry(p.text), cfg.method
            assert p.hlo_cost.collectives, cfg.method  # the replicated network's gradients cross the chips


def p_entry(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("ENTRY"))


@pytest.mark.slow
@pytest.mark.xdist_group("aot_gpu")
@needs_compilers
def test_plan_for_prints_the_plan_and_refuses_a_target_too_small(capsys, monkeypatch):
    from sm_jax.cli.condense import condense_main

    flags = ["--method", "dc", "--ipc", "1", "--preset", "cpu", "--width", "8", "--depth", "1", "--batch-real", "4",
             "--outer-loop", "1", "--inner-loop", "1", "--eval-epochs", "1", "--eval-models", "1"]
    condense_main(flags + ["--plan-for", "h100"], dataset="cifar10")
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("plan for h100 (NVIDIA H100 80GB HBM3, 1 chip")
    # every candidate's memory and time, then the choice: the lowest estimated time of those that fit
    candidates = [line for line in out if line.startswith("  class chunk ")]
    assert all(" GiB, " in line and " s estimated" in line for line in candidates), candidates
    order = [int(line.split()[2].rstrip(":")) for line in candidates]
    secs = [float(line.split(", ")[1].split()[0]) for line in candidates]
    assert order[:2] == [10, 1]  # the largest that fits, one class per program, then (where 1 is > 10 % slower)
    if secs[1] > 1.1 * secs[0]:  # the chunks between, until one is outside 10 % of the fastest
        assert order[2:] == [5, 3, 2][:len(order) - 2] and (secs[-1] > 1.1 * min(secs) or order[-1] == 2)
    else:
        assert order == [10, 1]
    chosen = next(line for line in out if line.startswith("class chunk: "))
    assert "estimated time of those that fit" in chosen
    record = json.loads(out[-1])
    # then the synthetic side for that chunk (split forms weighed only where the chunk leaves several programs)
    split_weighed = 0 < record["class_chunk"] < 10
    syn = next(line for line in out if line.startswith("synthetic side: ")) if split_weighed else chosen
    assert out[out.index(syn) + 1].startswith("iteration: compiled in") and "estimated" in out[out.index(syn) + 1]
    assert (record["syn_chunk"] == FUSED) == (syn == chosen or syn.startswith("synthetic side: fused"))
    times = {int(line.split()[2].rstrip(":")): float(line.split(", ")[1].split()[0]) for line in candidates}
    assert times[record["class_chunk"]] <= 1.1 * min(times.values()) and record["iteration"]["memory"]["total"] > 0
    assert record["run_seconds"]["total"] > 0
    tiny = dataclasses.replace(TARGETS["h100"], name="tiny-gpu", memory_bytes=2**20)
    monkeypatch.setitem(TARGETS, "tiny-gpu", tiny)
    with pytest.raises(SystemExit) as e:
        condense_main(flags + ["--class-chunk", "1", "--syn-chunk", "fused", "--plan-for", "tiny-gpu"],
                      dataset="cifar10")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: dc ipc 1 K 1 does not fit tiny-gpu: even one class per "
                                               "program needs"), err


@pytest.mark.slow
@pytest.mark.xdist_group("aot_gpu")
@needs_compilers
def test_a_study_forecast_plans_each_run_and_counts_its_experiments(tmp_path, capsys):
    from sm_jax.aot import compile as aot_compile
    from sm_jax.cli.study import study_main
    from sm_jax.study.forecast import forecast

    flags = {"method": "dc", "ipc": 1, "preset": "cpu", "width": 8, "depth": 1, "batch_real": 4, "outer_loop": 1,
             "inner_loop": 1, "eval_epochs": 1, "eval_models": 1, "class_chunk": 0}  # `auto`'s choice: tested above
    plan = tmp_path / "two.json"
    plan.write_text(json.dumps([{"id": "one", "flags": flags},
                                {"id": "three", "flags": {**flags, "seed": 4, "experiments": 3}}]))
    f = forecast(str(plan), "h100", {"iterations": 7}, log=lambda _: None)
    one, three = f["runs"]
    assert one["run_seconds"]["condense"] == pytest.approx(7 * one["iteration_seconds"])
    assert one["run_seconds"]["evaluate"] == pytest.approx(one["evaluation_seconds"])  # 1 network, 1 evaluation
    assert one["hours"] == pytest.approx(one["run_seconds"]["total"] / 3600) and one["hours"] > 0
    assert three["experiments"] == 3 and three["hours"] == pytest.approx(3 * one["hours"])  # same shapes
    assert f["hours"] == pytest.approx(one["hours"] + three["hours"])
    compiled = dict(aot_compile._COMPILED)
    assert len([k for k in compiled if k[1].name == "h100"]) >= 2  # an iteration and an evaluation at least
    study_main(["--plan", str(plan), "--plan-for", "h100"])  # the same programs: none compiled again
    assert aot_compile._COMPILED == compiled
    out = capsys.readouterr().out
    assert "| one | 0 |" in out and "| three | 0 |" in out and "| **total** |" in out  # chunk 0: all classes
