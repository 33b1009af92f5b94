import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sm_jax.data import Dataset  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session")
def tiny_data() -> Dataset:
    """3 classes x 16 train / 4 test random images: enough for every code path at tiny cost."""
    rng = np.random.default_rng(0)
    c, n, nt = 3, 16, 4
    return Dataset(rng.integers(0, 256, (c * n, 32, 32, 3), dtype=np.uint8), np.repeat(np.arange(c), n).astype(np.int32),
                   rng.integers(0, 256, (c * nt, 32, 32, 3), dtype=np.uint8), np.repeat(np.arange(c), nt).astype(np.int32),
                   ("a", "b", "c"), "tiny")


@pytest.fixture(scope="session")
def cifar_cache(tmp_path_factory):
    """Cache dir for the shared JPEG CIFAR-10 (decoded once per test session)."""
    if not SHARED_DATA.exists():
        pytest.skip("shared CIFAR-10 copy not present")
    return tmp_path_factory.mktemp("cache")
