import contextlib
import io
import os
import shutil
import tempfile
import warnings

# Tiny shapes make compilation most of the suite's time: XLA's backend optimisations and its newer CPU fusion
# emitters (which change speed, not results' semantics) are turned off to cut it by half. Subprocesses started by the
# tests inherit these flags (CPU_FLAGS, for the ones that set their own device count).
CPU_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=1 {CPU_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# the library's default (Config.precision): on a GPU the tolerances of the equivalence tests assume full float32
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "float32")
# One persistent compilation cache for the session, shared by both xdist workers (they inherit the controller's
# environment) and every subprocess: the many tiny runs compile the same programs (results do not depend on it; the
# cache is keyed by the program). Made by the first process, removed by it at the end. Only programs that took over
# JAX's default of 1 s to compile are stored: writing every small eager op costs more than it saves.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sm_jax_tests_xla_")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sm_jax.data import Dataset  # noqa: E402

_approx = pytest.approx


def _approx_of_numbers(expected, *args, **kwargs):
    """pytest.approx, refusing a JAX array as the expected value: expectations are Python or numpy numbers (pytest
    9.2 reads `.flat` of what it is handed, which a JAX array does not have), so a test fails here with one clear
    line rather than on the pytest release the registry serves next."""
    import jax

    if any(isinstance(x, jax.Array) for x in jax.tree.leaves(expected)):
        raise TypeError("pytest.approx was handed a JAX array as the expected value: use float() or np.asarray()")
    return _approx(expected, *args, **kwargs)


pytest.approx = _approx_of_numbers


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# xdist hands out work units (a group, or an ungrouped test) in collection order. The groups are the suite's longest
# units (multiprocess and cli about 1.5 minutes each): given out first, one to each worker, so that no worker is
# handed a long group near the end while the other runs out of work (alphabetical order gave multiprocess out late).
LONGEST_FIRST = ("multiprocess", "cli", "aot_tpu", "aot_gpu", "cli_in_process")


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own, which names each grouped test <nodeid>@<group>
def pytest_collection_modifyitems(config, items):
    grouped = [i for i in items if i.get_closest_marker("xdist_group")]
    if getattr(config.option, "loadgroup", False) and grouped and "@" not in grouped[0].nodeid:
        # pytest 9.2 reads a node id that pytest-xdist 3.8 does not set: each group is scattered over the workers,
        # which set up its module fixtures again (the suite takes minutes longer). A warning in the summary, since an
        # error raised in a worker reaches the terminal only as an INTERNALERROR without its message.
        warnings.warn(pytest.PytestWarning(
            f"--dist loadgroup does not group tests under pytest {pytest.__version__} with this pytest-xdist: "
            "the suite runs, slower; pyproject.toml's test extra and constraints/ci.txt name versions that group"))

    def rank(item):  # the groups in LONGEST_FIRST's order, then the tests marked slow, then the rest: the short
        # tests handed out last even out the workers' ends
        m = item.get_closest_marker("xdist_group")
        name = (m.args[0] if m.args else m.kwargs.get("name")) if m else None
        if name in LONGEST_FIRST:
            return LONGEST_FIRST.index(name)
        return len(LONGEST_FIRST) + (item.get_closest_marker("slow") is None)

    items.sort(key=rank)  # stable: the order within a rank is unchanged


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session")
def tiny_data() -> Dataset:
    """3 classes x 16 train / 4 test random images: enough for every code path at tiny cost."""
    rng = np.random.default_rng(0)
    c, n, nt = 3, 16, 4
    train_x = rng.integers(0, 256, (c * n, 32, 32, 3), dtype=np.uint8)
    test_x = rng.integers(0, 256, (c * nt, 32, 32, 3), dtype=np.uint8)
    return Dataset(train_x, np.repeat(np.arange(c), n).astype(np.int32), test_x,
                   np.repeat(np.arange(c), nt).astype(np.int32), ("a", "b", "c"), "tiny")


@pytest.fixture(scope="session")
def cifar_cache(tmp_path_factory):
    """Cache dir for the shared JPEG CIFAR-10 (decoded once per test session)."""
    if not SHARED_DATA.exists():
        pytest.skip("shared CIFAR-10 copy not present")
    return tmp_path_factory.mktemp("cache")


def dsa_only(op: str) -> str:
    """The --aug-drop value that leaves DSA's `op` alone: for a test of the draws (a random op drawn afresh each
    time, as the six are, which a replay or a resume must draw again) rather than of DSA, compiled in a fraction of
    the six ops' time."""
    from sm_jax.augmentation import DSA_OPS

    return ",".join(o for o in DSA_OPS if o != op)


def checkpoint_steps(workdir) -> list[int]:
    """The iterations a run directory holds checkpoints of, in order ([] before the first)."""
    ck = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit()) if ck.is_dir() else []


def cli_in_process(env: dict, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m experiments.cifar10 *args` run in this process, with `env`'s data
    settings (SM_JAX_CACHE, SM_JAX_OFFLINE): for a run whose process is not what a test checks (a reference, a resume
    after a stop). The XLA flags and the compilation cache are the suite's, which subprocesses inherit too."""
    from sm_jax.cli.condense import condense_main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for name in ("SM_JAX_CACHE", "SM_JAX_OFFLINE"):
            mp.setenv(name, env[name])
        try:
            condense_main(list(map(str, args)), dataset="cifar10")
            code = 0
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def write_image_folder_archive(path: Path, data: Dataset, fmt: str = "PNG") -> Path:
    """Writes `data` as an image-folder .tar.gz ({train,test}/{class}/NNNN.png) under one top folder."""
    import io
    import tarfile

    from PIL import Image

    with tarfile.open(path, "w:gz") as tf:
        for split, xs, ys in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
            for i, (x, y) in enumerate(zip(xs, ys)):
                buf = io.BytesIO()
                Image.fromarray(x).save(buf, fmt)
                info = tarfile.TarInfo(f"top/{split}/{data.class_names[y]}/{i:04d}.{fmt.lower()}")
                info.size = buf.tell()
                buf.seek(0)
                tf.addfile(info, buf)
    return path


@pytest.fixture(scope="session")
def tiny_archive(tiny_data, tmp_path_factory) -> Path:
    return write_image_folder_archive(tmp_path_factory.mktemp("data") / "tiny.tar.gz", tiny_data)
