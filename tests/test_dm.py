"""DM (distribution matching) and subset matching for it: the mean-embedding distance, the vmapped loss against a
loop computed independently, the batch-norm form (all classes in one batch), a fresh network per iteration."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import dsa_only

from sm_jax.augmentation import DSA_POLICY, siamese
from sm_jax.config import make_config
from sm_jax.errors import ConfigError
from sm_jax.matching import mean_embedding_distance
from sm_jax.methods import DM, METHODS, make_context, make_method
from sm_jax.methods.draws import draw_inputs


def tiny_cfg(**kw):
    base = dict(width=8, depth=1, batch_real=4, subset_batch_real=3, subset_k=2)
    return make_config("dm", 2, "cpu", **{**base, **kw})


def test_registry_presets_and_checks():
    assert METHODS["dm"] is DM
    paper = make_config("dm", 10)
    assert (paper.iterations, paper.lr_img, paper.momentum_img, paper.batch_real, paper.init) == (20000, 1.0, 0.5,
                                                                                               256, "real")
    assert (paper.eval_epochs, paper.eval_models, paper.eval_lr, paper.eval_batch) == (1000, 20, 0.01, 256)
    assert paper.fields_of("identity")["distance"] == "mean_embedding" and paper.subset_k == 2
    assert DM.eval_policy == DM.match_policy == DSA_POLICY
    with pytest.raises(ConfigError, match="does not apply to DM"):
        make_config("dm", 10, distance="cosine")


def test_mean_embedding_distance_hand_computed():
    er = jnp.array([[1.0, 2.0], [3.0, 4.0]])  # mean (2, 3)
    es = jnp.array([[0.0, 1.0], [2.0, -1.0], [1.0, 3.0]])  # mean (1, 1)
    assert float(mean_embedding_distance(er, es)) == 1.0 + 4.0
    g_real, g_syn = jax.grad(lambda a, b: mean_embedding_distance(a, b), argnums=(0, 1))(er, es)
    assert float(jnp.abs(g_real).max()) == 0.0  # the real side is a constant
    np.testing.assert_allclose(g_syn, np.tile(-2 * np.array([1.0, 2.0]) / 3, (3, 1)), rtol=1e-6)


def test_loss_is_zero_for_identical_batches_and_embed_is_the_classifier_input(tiny_data):
    m = make_method(tiny_cfg(), tiny_data.spec)
    params, _ = m.net.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, 32, 32, 3))
    embed = m.embedder({})
    assert float(m.class_loss(embed, params, x, x, jnp.int32(0), jax.random.key(2))) == 0.0
    assert float(m.class_loss(embed, params, x, x[:2], jnp.int32(0), jax.random.key(2))) > 0
    e = embed(params, x)  # ConvNet depth 1, width 8: the flattened 16 x 16 x 8 block
    assert e.shape == (5, 16 * 16 * 8)
    np.testing.assert_allclose(e @ params["fc"]["kernel"] + params["fc"]["bias"], m.net.apply(params, {}, x)[0],
                               rtol=1e-5, atol=1e-5)


def _reference(m, images, params, ctx, key, lam, embed):
    """The loss of every class and subset by a Python loop, each from its own images, draws (those `draw_inputs`
    made) and embeddings, and the gradient of their weighted sum."""
    c = images.shape[0]
    xs = draw_inputs(m.cfg, images, ctx, key, m.spec)
    k = ctx.real_part.shape[1]

    def dm(real, syn, key):
        r, s = siamese(m.match_policy, key, real, syn)
        er, es = embed(params, r), embed(params, s)
        return jnp.sum((er.mean(0) - es.mean(0)) ** 2)

    def total(images):
        la, ls = [], []
        for ci in range(c):
            la.append(dm(xs.real[ci], images[ci], xs.k_all[ci]))
            for ki in range(k):
                ls.append(dm(xs.real_sub[ci, ki], images[ci][xs.syn_part[ci, ki]], xs.k_sub[ci, ki]))
        la, ls = jnp.stack(la), jnp.stack(ls).reshape(c, k)
        return la.sum() + lam * ls.sum(), (la, ls)

    return jax.grad(total, has_aux=True)(images)


@pytest.mark.slow  # the quick loop has the gradient methods' (test_matching.py)
def test_vmapped_loss_and_gradient_equal_a_loop_over_classes_and_subsets(tiny_data):
    cfg = tiny_cfg(aug_drop="crop,cutout,scale,rotate")  # a choice of two ops per draw: the draws, at less compile
    m = make_method(cfg, tiny_data.spec)
    assert m.match_policy == (("color", "flip"),)
    ctx = make_context(cfg, tiny_data)
    images = m.init_images(tiny_data, jax.random.key(1))
    params, _ = m.net.init(jax.random.key(2))
    key, lam = jax.random.key(3), 0.7
    want, (la_w, ls_w) = _reference(m, images, params, ctx, key, lam, m.embedder({}))  # eager: no big compile
    got, (la, ls) = jax.jit(lambda i: m.match(i, params, ctx, key, lam))(images)
    assert la.shape == (3,) and ls.shape == (3, 2)
    np.testing.assert_allclose(la, la_w, rtol=1e-5)
    np.testing.assert_allclose(ls, ls_w, rtol=1e-5)  # the subset term: per-subset DM losses, computed apart
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6 * float(jnp.abs(want).max()))


def test_batch_norm_network_embeds_all_classes_in_one_batch(tiny_data):
    cfg = tiny_cfg(norm="batchnorm", subset_k=1, aug_drop="crop,cutout,scale,rotate")
    m = make_method(cfg, tiny_data.spec)
    assert m.batch_norm
    ctx = make_context(cfg, tiny_data)
    images = m.init_images(tiny_data, jax.random.key(1))
    params, bn = m.net.init(jax.random.key(2))
    key = jax.random.key(3)
    embed = m.embedder(bn)
    _, (la, _) = jax.jit(lambda i: m.match(i, params, ctx, key, 1.0, embed))(images)
    # the same draws, through the network class by class (batch statistics of one class) and all at once
    xs = draw_inputs(m.cfg, images, ctx, key, m.spec)
    pairs = [siamese(m.match_policy, xs.k_all[ci], xs.real[ci], images[ci]) for ci in range(3)]
    er = embed(params, jnp.concatenate([r for r, _ in pairs])).reshape(3, cfg.batch_real, -1)
    es = embed(params, jnp.concatenate([s for _, s in pairs])).reshape(3, cfg.ipc, -1)
    joint = jnp.sum((er.mean(1) - es.mean(1)) ** 2, -1)
    alone = jnp.stack([mean_embedding_distance(embed(params, r), embed(params, s)) for r, s in pairs])
    np.testing.assert_allclose(la, joint, rtol=1e-4)
    assert not np.allclose(la, alone, rtol=1e-2)  # batch statistics over every class, not one


def test_each_iteration_draws_a_fresh_network_from_its_key(tiny_data):
    cfg = tiny_cfg(aug_drop="crop,cutout,scale,rotate")
    m = make_method(cfg, tiny_data.spec)
    ctx = make_context(cfg, tiny_data)
    state = m.init_state(m.init_images(tiny_data, jax.random.key(0)))
    step = jax.jit(m.iteration)
    a, ma = step(state, ctx, jax.random.key(1))
    b, _ = step(state, ctx, jax.random.key(1))
    c, _ = step(state, ctx, jax.random.key(2))
    np.testing.assert_array_equal(a.images, b.images)  # the key fixes the network: a resumed run repeats it
    assert not np.allclose(a.images, c.images)  # another iteration's key, another network and draws
    assert int(a.iteration) == 1 and float(ma["lambda"]) == pytest.approx(1.0) and float(ma["loss_subset"]) > 0


@pytest.mark.slow
def test_dm_through_the_cli_writes_its_artifacts_and_resumes_bit_exact(tiny_archive, tmp_path, monkeypatch, capsys):
    import json
    import shutil

    from sm_jax.cli.condense import condense_main

    monkeypatch.setenv("SM_JAX_OFFLINE", "1")
    monkeypatch.setenv("SM_JAX_CACHE", str(tmp_path / "cache"))
    ref = tmp_path / "ref"
    argv = ["--method", "dm", "--ipc", "2", "--preset", "cpu", "--width", "8", "--depth", "1", "--batch-real", "4",
            "--subset-batch-real", "3", "--iterations", "4", "--checkpoint-every", "2", "--eval-models", "1",
            "--eval-epochs", "1", "--no-progress", "--data-dir", str(tiny_archive),
            "--aug-drop", dsa_only("flip")]
    condense_main([*argv, "--workdir", str(ref)], dataset="cifar10")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("config.json", "metrics.jsonl", "results.json", "synthetic.npz", "synthetic.png"):
        assert (ref / name).exists(), name
    assert json.loads((ref / "config.json").read_text())["method"] == "dm" and 0 <= summary["accuracy_mean"] <= 1
    steps = [json.loads(ln) for ln in (ref / "metrics.jsonl").read_text().splitlines() if "loss_all" in ln]
    assert [s["iteration"] for s in steps] == [1, 2, 3, 4] and steps[0]["lambda"] == 1.0
    # the run cut after its iteration-2 checkpoint, then resumed: the same set, bit for bit
    cut = tmp_path / "cut"
    shutil.copytree(ref, cut)
    shutil.rmtree(cut / "checkpoints" / "4")
    for name in ("results.json", "synthetic.npz"):
        (cut / name).unlink()
    condense_main([*argv, "--workdir", str(cut)], dataset="cifar10")
    assert f"resumed {cut} at iteration 2" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(ref / "synthetic.npz")["images"], np.load(cut / "synthetic.npz")["images"])
    assert [json.loads(ln)["iteration"] for ln in (cut / "metrics.jsonl").read_text().splitlines()
            if "loss_all" in ln] == [1, 2, 3, 4]
