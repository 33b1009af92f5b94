"""Evaluation protocols (hard, teacher, learned), the soft-target loss, DD-Ranking's scores and the lr grid."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sm_jax.augmentation import DSA_POLICY
from sm_jax.config import make_config
from sm_jax.evaluation import ddranking as ddr
from sm_jax.evaluation import evaluate_archs, reference
from sm_jax.methods import make_method
from sm_jax.models import make_net
from sm_jax.training import sgd, soft_cross_entropy, train_step


def _net():
    net = make_net("convnet", 3, (32, 32, 3), width=4, depth=1)
    params, state = net.init(jax.random.key(0))
    return net, params, state


def test_soft_cross_entropy_is_kl():
    logits = jnp.asarray([[1.0, 2.0, -1.0], [0.5, 0.0, 0.0]])
    # the expected values by hand in numpy/Python floats (pytest.approx is handed no JAX array)
    p = np.asarray(jax.nn.softmax(jnp.asarray([[0.0, 1.0, 0.0], [2.0, 0.0, 1.0]])), np.float64)
    q = np.asarray(jax.nn.softmax(logits), np.float64)
    by_hand = float(np.mean([sum(p[i, c] * math.log(p[i, c] / q[i, c]) for c in range(3)) for i in range(2)]))
    assert float(soft_cross_entropy(logits, jnp.asarray(p, jnp.float32))) == pytest.approx(by_hand, rel=1e-5)
    assert float(soft_cross_entropy(logits, jnp.asarray(q, jnp.float32))) == pytest.approx(0.0, abs=1e-6)
    w = jnp.asarray([1.0, 0.0])  # a padded row counts for nothing
    assert float(soft_cross_entropy(logits, jnp.asarray(p, jnp.float32), w)) == pytest.approx(
        float(sum(p[0, c] * math.log(p[0, c] / q[0, c]) for c in range(3))), rel=1e-5)


def test_teacher_sees_the_students_augmented_batch():
    """A student identical to its teacher has zero loss and zero gradient on every DSA draw, which holds only if both
    see the same augmented images; a teacher shown the un-augmented batch disagrees."""
    net, params, state = _net()
    x = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
    y, w = jnp.zeros((6,), jnp.int32), jnp.ones((6,))
    tx = sgd()
    for seed in range(3):
        new, _, _, loss = train_step(net, tx, params, state, tx.init(params), x, y, w, jax.random.key(seed), 0.1,
                                     DSA_POLICY, temperature=2.0, teacher=(net, params, state))
        assert float(loss) == pytest.approx(0.0, abs=1e-5)
        assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)))
    # the same targets as fixed logits of the un-augmented images: the augmented student no longer agrees
    fixed = net.apply(params, state, x, False)[0]
    _, _, _, loss = train_step(net, tx, params, state, tx.init(params), x, fixed, w, jax.random.key(0), 0.1,
                               DSA_POLICY, temperature=2.0)
    assert float(loss) > 1e-4
    _, _, _, loss = train_step(net, tx, params, state, tx.init(params), x, fixed, w, jax.random.key(0), 0.1, (),
                               temperature=2.0)  # no augmentation: the fixed targets are the student's own outputs
    assert float(loss) == pytest.approx(0.0, abs=1e-5)


def test_scores_by_hand():
    acc = dict(syn_hard=[0.5, 0.6], rdm_hard=[0.3, 0.3], syn_soft=[0.6, 0.6], rdm_soft=[0.4, 0.5],
               syn_soft_noaug=[0.55, 0.55], rdm_soft_noaug=[0.35, 0.35])
    s = ddr.scores(acc, 0.8)
    e = math.e
    # network 0: HLR 0.3, IOR 0.2, a = 0.1 - 0.15 = -0.05; ARS b = 0.5 * 0.2 + 0.5 * 0.2 = 0.2
    assert s["hlr"][0] == pytest.approx(30.0) and s["ior"][0] == pytest.approx(20.0)
    assert s["lrs"][0] == pytest.approx(100 * (math.exp(-0.05) - 1 / e) / (e - 1 / e))
    assert s["lrs"][0] == pytest.approx(24.8191538, rel=1e-7)
    assert s["ars"][0] == pytest.approx(100 * (math.exp(0.2) - 1 / e) / (e - 1 / e))
    # network 1: HLR 0.2, IOR 0.1, hard IOR 0.3
    assert s["hlr"][1] == pytest.approx(20.0) and s["ior"][1] == pytest.approx(10.0)
    assert s["lrs_hard"][1] == pytest.approx(100 * (math.exp(0.5 * 0.3 - 0.5 * 0.2) - 1 / e) / (e - 1 / e))
    # the ends of the scale: a = -1 gives 0, a = 1 gives 1
    assert ddr.normalised_exp(-1.0) == pytest.approx(0.0, abs=1e-12) and ddr.normalised_exp(1.0) == pytest.approx(1)


@pytest.fixture
def grid_data(tiny_data, monkeypatch, tmp_path):
    monkeypatch.setitem(reference.BUDGETS, "cpu", {"models": 1, "epochs": 2, "per_class": 0, "holdout": 4})
    cfg = make_config("dsa", 2, "cpu", width=4, depth=1, eval_epochs=2, eval_models=2, seed=0)
    return cfg, make_method(cfg, tiny_data.spec), tmp_path


def test_lr_grid_never_reads_the_test_split(tiny_data, grid_data):
    """Poisoning the test split (shuffled labels, inverted images) changes the accuracies but not one chosen lr."""
    cfg, method, cache = grid_data
    images = method.normalize(jnp.asarray(tiny_data.train_x[:6].reshape(3, 2, 32, 32, 3), jnp.float32) / 255.0)
    key = jax.random.key(3)
    # 5 networks per cell, as many as the lr grid, on a hold-out as large as the test split: the cells' programs are
    # the grid's (one compilation per protocol)
    nets = len(ddr.LR_GRID)
    a = ddr.ddranking(method, tiny_data, images, key, nets, "cpu", cache, log=lambda *_: None, progress=False)
    rng = np.random.default_rng(1)
    poisoned = dataclasses.replace(tiny_data, test_x=255 - tiny_data.test_x, test_y=rng.permutation(tiny_data.test_y))
    b = ddr.ddranking(method, poisoned, images, key, nets, "cpu", cache / "other", log=lambda *_: None,
                      progress=False)
    assert [c["lr"] for c in a["cells"].values()] == [c["lr"] for c in b["cells"].values()]
    assert [c["heldout_accuracies"] for c in a["cells"].values()] == \
        [c["heldout_accuracies"] for c in b["cells"].values()]
    assert a["cells"]["syn_hard"]["accuracies"] != b["cells"]["syn_hard"]["accuracies"]
    assert set(a) >= {"hlr", "ior", "lrs", "ars"} and all(c["lr"] in ddr.LR_GRID for c in a["cells"].values())
    # the reference trained once: asked again, it is read from its directory (no training line, same teacher)
    train, _ = reference.split(tiny_data, "cpu")
    lines = []
    ref = reference.Reference(cache, train, method.net.name, "cpu", 0, "normalised")
    assert str(ref.dir) == a["reference"]["dir"] and ref.done()
    _, params, _ = ref.teacher(method.net, method.normalize, train, log=lines.append, progress=False)
    assert lines == [] and ref.accuracies() == a["reference"]["accuracies"]


def test_default_protocol_is_the_methods_own(tiny_data):
    """'' is `hard` for gradient matching and `learned` for MTT: the same networks, the same accuracies."""
    cfg = make_config("dc", 2, "cpu", width=4, depth=1, eval_epochs=2)
    m = make_method(cfg, tiny_data.spec)
    images = m.normalize(jnp.asarray(tiny_data.train_x[:6].reshape(3, 2, 32, 32, 3), jnp.float32) / 255.0)

    def accs(protocol, learned=None, method=m):
        return evaluate_archs(method, images, tiny_data.test_x, tiny_data.test_y, jax.random.key(0), 2,
                              (method.net.name,), learned=learned, protocol=protocol)

    own, hard = accs(""), accs("hard")
    assert own["accuracies"] == hard["accuracies"] and own["eval_protocol"] == "hard"
    # a learned lr is used by `learned` only
    assert accs("learned", {"lr": 0.05})["eval_lr"] == 0.05 and accs("hard", {"lr": 0.05})["eval_lr"] == 0.01


def test_rank_orders_by_lrs_writes_the_tables_and_reuses_scored_sets(tmp_path, monkeypatch):
    from sm_jax.sets import rank

    calls = []

    def fake(path, overrides, dataset=None, method=None, out=None, progress=True, log=print):
        calls.append(path)
        lrs = {"a": 20.0, "b": 30.0}[path]
        return {"method": "dm", "images_per_class": 10, "accuracy_mean": lrs / 100,
                "ddranking": {"hlr": 1.0, "ior": 2.0, "lrs": lrs, "ars": 5.0, "lrs_std": 0.1, "ars_std": 0.2}}
    monkeypatch.setattr(rank, "evaluate_set_path", fake)
    rows = rank.rank_sets(["a", "b"], {"preset": "cpu"}, tmp_path, log=lambda *_: None)
    assert [r["set"] for r in rows] == ["b", "a"] and [r["rank"] for r in rows] == [1, 2]
    table = (tmp_path / "ranking.md").read_text().splitlines()
    assert table[0].startswith("| rank | set |") and "LRS" in table[0] and table[2].startswith("| 1 | b |")
    assert (tmp_path / "ranking.csv").read_text().splitlines()[1].startswith("1,b,dm,10,30.0")
    assert (tmp_path / "ranking.png").stat().st_size > 0
    rank.rank_sets(["a", "b"], {"preset": "cpu"}, tmp_path, log=lambda *_: None)  # the same request: read back
    assert calls == ["a", "b"]
    rank.rank_sets(["a"], {"preset": "paper"}, tmp_path, log=lambda *_: None)  # another request: scored again
    assert calls == ["a", "b", "a"]
