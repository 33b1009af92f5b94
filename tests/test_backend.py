"""Per-device choices: the automatic class chunk, predicted program memory, fp32 precision."""
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from sm_jax import backend
from sm_jax.config import make_config
from sm_jax.methods import make_method


class FakeCompiled:
    def __init__(self, args, out, temp, alias=0):
        self.m = SimpleNamespace(argument_size_in_bytes=args, output_size_in_bytes=out, temp_size_in_bytes=temp,
                                 alias_size_in_bytes=alias)

    def memory_analysis(self):
        return self.m


def test_program_bytes_is_arguments_outputs_temporaries_less_donated():
    assert backend.program_bytes(FakeCompiled(100, 30, 500, alias=30)) == 600
    compiled = jax.jit(lambda a: (a @ a).sum(), donate_argnums=()).lower(jnp.ones((64, 64))).compile()
    m = compiled.memory_analysis()
    assert backend.program_bytes(compiled) == (m.argument_size_in_bytes + m.output_size_in_bytes
                                               + m.temp_size_in_bytes - m.alias_size_in_bytes)
    assert backend.program_bytes(compiled) >= 64 * 64 * 4  # at least the argument


def test_chunk_candidates_halve_from_all_classes_to_one():
    assert backend.chunk_candidates(10) == [10, 5, 3, 2, 1]
    assert backend.chunk_candidates(100) == [100, 50, 25, 13, 7, 4, 2, 1]
    assert backend.chunk_candidates(1) == [1]


def test_auto_class_chunk_takes_the_largest_chunk_that_fits():
    # memory grows with the chunk: 1 GiB fixed + 1 GiB per class in the program
    tried = []

    def compile_with(chunk):
        tried.append(chunk)
        return FakeCompiled(2**30, 0, chunk * 2**30)

    logs = []
    assert backend.auto_class_chunk(10, compile_with, limit=8 * 2**30, log=logs.append) == 5  # 6 GiB <= 6.8 GiB
    assert tried == [10, 5] and "5 of 10 classes" in logs[0] and "6.0 GiB of 8.0 GiB" in logs[0]
    assert backend.auto_class_chunk(10, compile_with, limit=80 * 2**30, log=logs.append) == 10
    assert backend.auto_class_chunk(10, compile_with, limit=2**30, log=logs.append) == 1  # nothing fits
    assert "exceed" in logs[-1]


def test_auto_class_chunk_on_cpu_is_the_measured_fastest_without_compiling():
    assert jax.default_backend() == "cpu"
    assert backend.auto_class_chunk(10, lambda c: pytest.fail("compiled")) == backend.CPU_CLASS_CHUNK == 1
    assert make_config("dc", 10).class_chunk == -1  # auto by default
    assert make_method(make_config("dc", 10)).cfg.class_chunk == 1
    assert make_method(make_config("dc", 10, class_chunk=0)).cfg.class_chunk == 0


def test_precision_option_sets_jax_default_matmul_precision():
    before = jax.config.jax_default_matmul_precision
    try:
        backend.apply_precision("tensorfloat32")
        assert jax.config.jax_default_matmul_precision == "tensorfloat32"
        backend.apply_precision("float32")
        assert jax.config.jax_default_matmul_precision == "float32"
        with pytest.raises(ValueError, match="unknown precision"):
            backend.apply_precision("fp8")
    finally:
        jax.config.update("jax_default_matmul_precision", before)
