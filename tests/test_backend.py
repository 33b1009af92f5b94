"""Per-device choices: the automatic class chunk, predicted program memory, fp32 precision."""
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from sm_jax import backend
from sm_jax.config import make_config
from sm_jax.errors import ConfigError
from sm_jax.methods import make_method


class FakeCompiled:
    def __init__(self, args, out, temp, alias=0):
        self.m = SimpleNamespace(argument_size_in_bytes=args, output_size_in_bytes=out, temp_size_in_bytes=temp,
                                 alias_size_in_bytes=alias)

    def memory_analysis(self):
        return self.m


def test_program_bytes_is_arguments_outputs_temporaries_less_donated():
    assert backend.program_bytes(FakeCompiled(100, 30, 500, alias=30)) == 600
    # a real program of known buffers: a (64, 64) float32 argument (16 KiB) and an output of the same shape; donated,
    # the output reuses the argument's buffer, so the program needs 16 KiB less
    size = 64 * 64 * 4
    kept, donated = (backend.program_bytes(jax.jit(lambda a: a + 1, donate_argnums=d).lower(jnp.ones((64, 64)))
                                           .compile()) for d in ((), (0,)))
    assert kept >= 2 * size and kept - donated == size


def test_chunk_candidates_halve_from_all_classes_to_one():
    assert backend.chunk_candidates(10) == [10, 5, 3, 2, 1]
    assert backend.chunk_candidates(100) == [100, 50, 25, 13, 7, 4, 2, 1]
    assert backend.chunk_candidates(1) == [1]


def test_auto_class_chunk_takes_the_least_memory_within_the_margin_of_the_fastest_that_fits():
    # memory grows with the chunk: 1 GiB fixed + 1 GiB per class in the program; time by hand below
    tried = []
    seconds = {10: 0.9, 5: 0.3, 3: 0.2, 2: 0.25, 1: 0.4}

    def cost_of(chunk, timed=True):
        tried.append(chunk)
        return backend.program_bytes(FakeCompiled(2**30, 0, chunk * 2**30)), seconds[chunk] if timed else None

    def resolve(limit=8 * 2**30, fn=cost_of):
        tried.clear()
        return backend.resolve_class_chunk(backend.AUTO_CHUNK, 10, None, fn, limit, logs.append)

    logs = []
    # 10 does not fit 85 % of 8 GiB; one class per program (0.4 s) is more than 10 % slower than the largest that
    # fits (5: 0.3 s), so the chunks between are costed, largest first, until one is outside the margin: 3 (0.2 s,
    # the new best) then 2 (0.25 s > 1.1 x 0.2)
    assert resolve() == 3
    assert tried == [10, 5, 1, 3, 2]
    assert logs[0] == "  class chunk 10: 11.00 GiB, 0.9 s estimated (does not fit)"
    assert logs[2] == "  class chunk 1: 2.00 GiB, 0.4 s estimated"
    assert logs[-1] == ("class chunk: 3 of 10 classes per program (the lowest estimated time of those that fit 85% "
                        "of 8.0 GiB)")
    seconds[3] = 0.5  # the first chunk between is outside the margin: 2 is not compiled
    assert resolve() == 5 and tried == [10, 5, 1, 3]
    seconds.update({3: 0.31, 2: 0.32, 1: 0.34})  # all within 10 % of 5's 0.3 s but 1: the least memory of those, 2
    assert resolve() == 2 and tried == [10, 5, 1, 3, 2]
    assert logs[-1].endswith("(the least memory within 10% of the lowest estimated time of those that fit 85% of "
                             "8.0 GiB)")
    seconds[1] = 0.1  # one class per program faster: nothing between is compiled
    assert resolve() == 1 and tried == [10, 5, 1]
    seconds[1] = 0.32  # within 10 % of the larger: the smaller program, nothing between compiled
    assert resolve() == 1 and tried == [10, 5, 1]
    assert resolve(1.3 * 2**30) == 1  # the only fit
    assert resolve(2**30) == 1  # nothing fits
    assert "exceed" in logs[-1]
    # no time known: the largest chunk that fits
    assert resolve(fn=lambda c: cost_of(c, timed=False)) == 5 and tried == [10, 5, 1]
    assert "(the largest of those that fit" in logs[-1]


def test_auto_class_chunk_on_cpu_is_the_measured_fastest_without_compiling():
    assert jax.default_backend() == "cpu"
    fail = lambda c: pytest.fail("compiled")
    assert backend.resolve_class_chunk(backend.AUTO_CHUNK, 10, None, fail) == backend.CPU_CLASS_CHUNK == 1
    assert backend.resolve_class_chunk(7, 10, None, fail) == 7  # a number is kept
    assert make_config("dc", 10).class_chunk == backend.AUTO_CHUNK  # auto by default
    assert make_method(make_config("dc", 10)).class_chunk == 1
    assert make_method(make_config("dc", 10, class_chunk=0)).class_chunk == 0


def test_auto_syn_chunk_splits_only_where_estimated_faster_within_the_fused_forms_memory():
    # the fused iteration: 1 GiB, 1.0 s; split ones: memory grows with the synthetic side's chunk, time falls
    tried = []
    costs = {backend.FUSED: (1.0, 1.0), 10: (1.5, 0.90), 5: (1.08, 0.95), 3: (1.0, 0.97), 2: (0.98, 0.99)}

    def cost_of(syn):
        tried.append(syn)
        need, secs = costs[syn]
        return int(need * 2**30), secs

    def resolve(chunk=1, requested=backend.AUTO_CHUNK, can_split=True):
        tried.clear()
        return backend.resolve_syn_chunk(requested, chunk, 10, can_split, cost_of, 80 * 2**30, logs.append)

    logs = []
    # all classes needs 50 % more memory than fused; 5 is within 10 %, and faster: taken, nothing smaller compiled
    assert resolve() == 5 and tried == [backend.FUSED, 10, 5]
    assert logs[0] == "  fused: 1.00 GiB, 1 s estimated"
    assert logs[1] == "  split, synthetic side 10 classes per program: 1.50 GiB, 0.9 s estimated"
    assert logs[-1] == ("synthetic side: 5 classes per program after the real side (estimated faster, within 10% of "
                        "the fused form's memory)")
    assert resolve(chunk=3) == 5 and tried == [backend.FUSED, 10, 5]  # only chunks above the real side's
    tried.clear()  # within the fused form's memory but not within 85 % of the device: the next one down
    assert backend.resolve_syn_chunk(backend.AUTO_CHUNK, 1, 10, True, cost_of, 1.2 * 2**30, logs.append) == 3
    assert tried == [backend.FUSED, 10, 5, 3]
    costs[5] = (1.08, 1.01)  # the largest within the memory is not faster: fused, nothing smaller compiled
    assert resolve() == backend.FUSED and tried == [backend.FUSED, 10, 5]
    assert "not estimated faster" in logs[-1]
    costs.update({5: (1.2, 0.95), 3: (1.2, 0.97), 2: (1.2, 0.99)})  # none within the memory
    assert resolve() == backend.FUSED and tried == [backend.FUSED, 10, 5, 3, 2]
    # nothing compiled: a number or fused is kept; all classes already in one program; no split form; CPU
    for kw in ({"requested": 4}, {"requested": backend.FUSED}, {"chunk": 0}, {"chunk": 10}, {"can_split": False}):
        assert resolve(**kw) == kw.get("requested", backend.FUSED) and tried == []
    assert backend.resolve_syn_chunk(backend.AUTO_CHUNK, 1, 10, True, cost_of) == backend.FUSED and tried == []
    assert make_method(make_config("dc", 10)).syn_chunk == backend.FUSED
    assert make_method(make_config("dc", 10, syn_chunk=0)).syn_chunk == 0
    with pytest.raises(ConfigError, match="--syn-chunk 0 needs a gradient distance"):
        make_method(make_config("dm", 10, syn_chunk=0))
    with pytest.raises(ConfigError, match="only the fused form"):
        make_method(make_config("dc", 10, syn_chunk=2, norm="batchnorm"))
    from sm_jax.cli.common import syn_chunk
    assert (syn_chunk("fused"), syn_chunk("auto"), syn_chunk("3")) == (backend.FUSED, backend.AUTO_CHUNK, 3)


def test_eval_parallel_auto_weighs_one_network_per_device_against_twenty_by_the_estimate():
    from types import SimpleNamespace

    from sm_jax.cli.condense import condense_parser, config_from_flags

    assert make_config("dc", 10).eval_parallel == backend.AUTO_PARALLEL  # auto by default
    assert backend.resolve_eval_parallel(backend.AUTO_PARALLEL) == 1
    assert backend.resolve_eval_parallel(backend.AUTO_PARALLEL, SimpleNamespace(size=4)) == 4  # a mesh of 4
    assert backend.resolve_eval_parallel(3, SimpleNamespace(size=4)) == 3  # a number is kept
    # on an accelerator (here: a device limit given) auto weighs 1 against 20 per call by the estimate per network
    costs = {1: (2**30, 0.5), 20: (4 * 2**30, 9.2)}  # 0.46 s per network at 20: one alone is within 10 % of it
    tried, logs = [], []

    def cost_of(width):
        tried.append(width)
        return costs[width]

    def auto(limit=8 * 2**30, models=20, mesh=None):
        tried.clear()
        return backend.resolve_eval_parallel(backend.AUTO_PARALLEL, mesh, models, cost_of, limit, logs.append)

    assert auto() == 1 and tried == [1, 20]
    assert logs[-3:] == ["  evaluation, 1 network per call: 1.00 GiB, 0.5 s per network estimated",
                         "  evaluation, 20 networks per call: 4.00 GiB, 0.46 s per network estimated",
                         "evaluation: 1 network per call (the wider is not estimated more than 10% faster per "
                         "network)"]
    costs[20] = (4 * 2**30, 8.0)  # 0.4 s per network: 20 % faster
    assert auto() == 20 and logs[-1].endswith("(estimated faster per network by more than the margin)")
    assert auto(limit=4 * 2**30) == 1 and logs[-1].endswith("(the wider does not fit)")  # 85 % of 4 GiB < 4 GiB
    costs[10] = costs[20]
    assert auto(models=10) == 1 and tried == [1, 10]  # the wider is at most the networks to train: 0.8 s each
    assert auto(models=1) == 1 and tried == []  # nothing to weigh: not compiled
    costs[4], costs[20] = (2**30, 1.0), (4 * 2**30, 4.0)  # a mesh of 4: one network per device, or 20 per call
    assert auto(mesh=SimpleNamespace(size=4)) == 20 and tried == [4, 20]
    assert backend.resolve_eval_parallel(backend.AUTO_PARALLEL, None, 20, cost_of) == 1  # on CPU: not compiled
    argv = ["--method", "dc", "--ipc", "1", "--preset", "cpu"]
    parse = lambda *more: config_from_flags(condense_parser("cifar10").parse_args([*argv, *more]))  # noqa: E731
    assert parse("--eval-parallel", "auto").eval_parallel == backend.AUTO_PARALLEL
    assert parse("--eval-parallel", "5").eval_parallel == 5


def test_precision_option_sets_jax_default_matmul_precision_within_its_context():
    before = jax.config.jax_default_matmul_precision
    with backend.precision("tensorfloat32"):
        assert jax.config.jax_default_matmul_precision == "tensorfloat32"
        with backend.precision("float32"):
            assert jax.config.jax_default_matmul_precision == "float32"
    assert jax.config.jax_default_matmul_precision == before  # no global change
    with pytest.raises(ValueError, match="unknown precision"):
        backend.precision("fp8")


@pytest.mark.slow
def test_run_fits_the_class_chunk_to_a_memory_limit_with_real_compiled_programs(tiny_data, tmp_path):
    """The accelerator path of --class-chunk auto, on CPU with a given limit, on 2 classes (candidates 2, 1):
    between the two programs' predicted sizes it takes one class per program, the largest that fits."""
    from sm_jax.data import Dataset
    from sm_jax.experiment import Run
    from sm_jax.methods import make_context

    keep, keep_t = tiny_data.train_y < 2, tiny_data.test_y < 2
    data = Dataset(tiny_data.train_x[keep], tiny_data.train_y[keep], tiny_data.test_x[keep_t],
                   tiny_data.test_y[keep_t], tiny_data.class_names[:2], "tiny, 2 classes")
    cfg = make_config("dc", 2, "cpu", width=8, depth=1, batch_real=4, subset_k=2, outer_loop=1, inner_loop=1,
                      workdir=str(tmp_path / "w"))
    logs = []
    run = Run(cfg, data=data, progress=False, log=logs.append)
    state, partitions = run.fresh()
    ctx = make_context(cfg, data, partitions)

    def bytes_of(chunk):
        m = make_method(cfg.replace(class_chunk=chunk), data.spec)
        return backend.program_bytes(jax.jit(m.iteration, donate_argnums=0).lower(state, ctx, run.key).compile())

    one, both = bytes_of(1), bytes_of(2)
    assert one < both  # one class per program needs less memory
    limit = int((one + both) / 2 / backend.MEMORY_HEADROOM)
    run._resolve_class_chunk(state, ctx, limit=limit)
    assert run.method.class_chunk == 1
    assert run.predicted["iteration"] == one  # what the run's memory bound is measured against
    # on CPU no time is estimated: each candidate's memory, then the largest that fits
    assert logs[:3] == [f"  class chunk 2: {both / 2**30:.2f} GiB, time unknown (does not fit)",
                        f"  class chunk 1: {one / 2**30:.2f} GiB, time unknown",
                        f"class chunk: 1 of 2 classes per program (the largest of those that fit 85% of "
                        f"{limit / 2**30:.1f} GiB)"]
    # then the synthetic side for that chunk: the fused program (compiled above, not again) against the split one;
    # without a time the split is not taken
    assert logs[3] == f"  fused: {one / 2**30:.2f} GiB, time unknown"
    assert logs[4].startswith("  split, synthetic side 2 classes per program: ") and logs[4].endswith("time unknown")
    assert logs[5].startswith("synthetic side: fused (") and len(logs) == 6
    assert run.method.syn_chunk == backend.FUSED


@pytest.mark.slow
def test_run_weighs_its_evaluation_widths_with_real_compiled_programs(tiny_data, tmp_path):
    """The accelerator path of --eval-parallel auto, on CPU with a given limit: the evaluation program compiled at
    one network and at all 3 per call on the run's shapes; on CPU no time is estimated, so one per call; resolved
    once per (networks, epochs)."""
    from sm_jax.experiment import Run

    cfg = make_config("dc", 2, "cpu", width=8, depth=1, eval_models=3, eval_epochs=1, workdir=str(tmp_path / "w"))
    logs = []
    run = Run(cfg, data=tiny_data, progress=False, log=logs.append)
    images = run.method.decode(run.fresh()[0].images)
    logs.clear()
    assert run._eval_parallel(images, 3, 1, None, limit=2**40) == 1
    assert [line.split(":")[0] for line in logs] == ["  evaluation, 1 network per call",
                                                     "  evaluation, 3 networks per call", "evaluation"]
    one, three = (float(line.split(": ")[1].split(" GiB")[0]) for line in logs[:2])
    assert one > 0 and three > 0 and one != three  # two programs, each with its memory analysis
    assert logs[1].endswith("time unknown") and logs[2].endswith("(the wider's time is unknown)")
    assert run._eval_parallel(images, 3, 1, None, limit=2**40) == 1 and len(logs) == 3  # not weighed again
    assert f"{run.predicted['evaluation'] / 2**30:.2f}" == f"{one:.2f}"  # the program chosen


def test_memory_bound_measures_the_peak_against_the_larger_program_and_the_data_beside_it():
    gib = 2**30
    # iteration 4 GiB (the data among its arguments), evaluation 1 GiB + 0.5 GiB of data beside it: 4 GiB predicted
    b = backend.memory_bound(5 * gib, 4 * gib, gib, gib // 2)
    assert b["predicted_bytes"] == 4 * gib and b["ratio"] == 1.25 and b["within"]
    b = backend.memory_bound(6 * gib, 2 * gib, 3 * gib, 2 * gib)  # the evaluation and the data the larger: 5 GiB
    assert b["predicted_bytes"] == 5 * gib and b["ratio"] == 1.2 and b["within"]
    assert not backend.memory_bound(7 * gib, 2 * gib, 3 * gib, 2 * gib)["within"]  # 1.4x
    assert backend.memory_bound(None, gib, gib) is None  # no peak (CPU)
    assert backend.memory_bound(gib, None, None) is None  # nothing weighed
    assert backend.memory_bound(gib, None, gib // 2)["ratio"] == 2.0


def test_no_device_buffer_outlives_its_iteration(tiny_data, tmp_path, monkeypatch):
    """The run's loop keeps the state and one host copy, nothing per iteration: the device arrays alive after each
    iteration (counted where the loop copies the state to the host) are the same in number and bytes from the
    second on (DC with subsets, the state as every method keeps it)."""
    from sm_jax import experiment

    live = []

    def counting_host(tree):
        arrays = jax.live_arrays()
        live.append((len(arrays), sum(a.nbytes for a in arrays)))
        return experiment_host(tree)

    experiment_host = experiment.host
    monkeypatch.setattr(experiment, "host", counting_host)
    cfg = make_config("dc", 2, "cpu", width=8, depth=1, batch_real=4, subset_k=2, subset_batch_real=3, outer_loop=2,
                      inner_loop=1, iterations=5, eval_models=0, checkpoint_every=0, workdir=str(tmp_path / "w"))
    experiment.Run(cfg, data=tiny_data, progress=False, log=lambda _: None).execute()
    assert len(live) == 2 + 5  # the fresh state's copies before the loop, then one per iteration
    assert len(set(live[2:])) == 1, live  # every iteration leaves the same arrays alive
