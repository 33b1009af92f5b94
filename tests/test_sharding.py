"""The class axis sharded over 4 (virtual CPU) devices gives the single-device results."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CPU_FLAGS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a process with 4 devices

SCRIPT = r"""
import json
import jax, numpy as np
from sm_jax.config import make_config
from sm_jax.data import Dataset, DataSpec
from sm_jax.evaluation import evaluate_set
from sm_jax.methods import CondenseState, make_context, make_method
from sm_jax.sharding import make_mesh, put

rng = np.random.default_rng(0)
c, n = 4, 16
data = Dataset(rng.integers(0, 256, (c * n, 32, 32, 3), dtype=np.uint8), np.repeat(np.arange(c), n).astype(np.int32),
               rng.integers(0, 256, (c * 4, 32, 32, 3), dtype=np.uint8), np.repeat(np.arange(c), 4).astype(np.int32),
               tuple("abcd"), "tiny")
out = {"devices": len(jax.devices())}
for method in ("dsa",):
    cfg = make_config(method, 2, "cpu", width=8, depth=1, batch_real=4, subset_batch_real=2, subset_k=2, outer_loop=2,
                      inner_loop=1, iterations=1, eval_epochs=1, batch_train=8, max_syn_per_class=4)
    for devices in (1, 4):
        mesh = make_mesh(devices)
        m = make_method(cfg, DataSpec(num_classes=c), mesh)
        state = m.init_state(m.init_images(data, jax.random.key(1)))
        state = CondenseState(put(state.images, mesh, True), put(state.opt_state, mesh, True), state.iteration)
        ctx = put(make_context(cfg, data), mesh, False)
        state, metrics = jax.jit(m.iteration)(state, ctx, jax.random.key(3))
        shards = state.images.addressable_shards
        accs = evaluate_set(m, m.decode(state.images), data.test_x, data.test_y, jax.random.key(5), 4, parallel=4,
                            mesh=mesh)
        out[f"{method}{devices}"] = {"images": np.asarray(state.images).ravel()[::97].tolist(),
                                     "loss": float(metrics["loss_all"]), "sub": float(metrics["loss_subset"]),
                                     "shard_shape": list(shards[0].data.shape), "shards": len(shards),
                                     "accs": accs.tolist()}
print(json.dumps(out))
"""


def test_class_axis_sharded_over_4_devices_matches_one_device():
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count=4 {CPU_FLAGS}", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    for method in ("dsa",):
        one, four = out[f"{method}1"], out[f"{method}4"]
        assert four["shards"] == 4 and four["shard_shape"][0] == 1  # one class per device
        assert one["shards"] == 1 and one["shard_shape"][0] == 4
        np.testing.assert_allclose(four["images"], one["images"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose([four["loss"], four["sub"]], [one["loss"], one["sub"]], rtol=1e-4)
        np.testing.assert_allclose(four["accs"], one["accs"], atol=1e-6)
