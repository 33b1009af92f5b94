import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import dsa_only

from sm_jax.backend import FUSED
from sm_jax.config import make_config
from sm_jax.data import DataSpec
from sm_jax.errors import ConfigError
from sm_jax.methods import IDC, idc_decode, idc_init, make_context, make_method, make_partitions


def tiny_cfg(method, ipc=2, **kw):
    base = dict(iterations=2, outer_loop=2, inner_loop=1, batch_real=4, batch_train=8, width=8, depth=1, eval_epochs=2,
                eval_models=1, subset_batch_real=3)
    base.update(kw)
    return make_config(method, ipc, "cpu", **base)


def test_idc_init_against_hand_built_blocks():
    # class 0 images have constant value i (image index), class 1 values 100 + i
    train_x = np.stack([np.full((32, 32, 3), v, np.uint8) for v in list(range(8)) + list(range(100, 108))])
    class_idx = np.array([np.arange(8), np.arange(8, 16)])
    out = np.asarray(idc_init(train_x, class_idx, ipc=2, factor=2)) * 255
    assert out.shape == (2, 2, 32, 32, 3)
    # stored image j: block (r, c) holds real image (2r + c) * ipc + j
    for ci, base in [(0, 0), (1, 100)]:
        for j in range(2):
            for r in range(2):
                for c in range(2):
                    block = out[ci, j, 16 * r:16 * (r + 1), 16 * c:16 * (c + 1)]
                    np.testing.assert_allclose(block, base + (2 * r + c) * 2 + j, atol=1e-4)


def test_idc_init_subsamples_every_other_pixel():
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    out = np.asarray(idc_init(train_x, np.array([np.arange(4)]), ipc=1, factor=2))
    np.testing.assert_allclose(out[0, 0, :16, 16:], train_x[1, ::2, ::2] / 255.0, atol=1e-6)


def torch_bilinear_up2(img):
    """Reference: torch's F.interpolate(scale 2, bilinear, align_corners=False) written out in numpy."""
    s = img.shape[0]
    out = np.zeros((2 * s, 2 * s, img.shape[2]))
    for o in range(2 * s):
        src = max((o + 0.5) / 2 - 0.5, 0.0)
        i0 = int(np.floor(src))
        i1, t = min(i0 + 1, s - 1), src - i0
        for p in range(2 * s):
            srcp = max((p + 0.5) / 2 - 0.5, 0.0)
            j0 = int(np.floor(srcp))
            j1, u = min(j0 + 1, s - 1), srcp - j0
            out[o, p] = ((1 - t) * (1 - u) * img[i0, j0] + (1 - t) * u * img[i0, j1]
                         + t * (1 - u) * img[i1, j0] + t * u * img[i1, j1])
    return out


def test_idc_decode_quarters_upsampled_like_torch():
    x = jax.random.uniform(jax.random.key(0), (2, 3, 32, 32, 3))
    dec = np.asarray(idc_decode(x, 2))
    assert dec.shape == (2, 12, 32, 32, 3)
    xs = np.asarray(x)
    for q, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        for j in range(3):  # crop-major order: index = q * ipc + j
            ref = torch_bilinear_up2(xs[1, j, 16 * r:16 * r + 16, 16 * c:16 * c + 16])
            np.testing.assert_allclose(dec[1, q * 3 + j], ref, atol=1e-5)


def test_idc_upsampling_equals_jax_image_resize_values_and_gradients():
    from sm_jax.methods.idc import upsample

    x = jax.random.uniform(jax.random.key(2), (2, 5, 7, 3))
    for factor in (2, 3):
        want = jax.image.resize(x, (2, 5 * factor, 7 * factor, 3), "bilinear", antialias=False)
        got = upsample(upsample(x, factor, 1), factor, 2)
        np.testing.assert_allclose(got, want, atol=1e-6)
        probe = jax.random.normal(jax.random.key(3), want.shape)
        g_want = jax.grad(lambda a: jnp.sum(jax.image.resize(a, want.shape, "bilinear", antialias=False) * probe))(x)
        g_got = jax.grad(lambda a: jnp.sum(upsample(upsample(a, factor, 1), factor, 2) * probe))(x)
        np.testing.assert_allclose(g_got, g_want, atol=1e-5)


def test_idc_per_class_steps_replay_sequential_momentum():
    cfg = tiny_cfg("idc", ipc=1, lr_img=0.1)
    m = IDC(cfg, DataSpec(num_classes=3))
    images = jax.random.uniform(jax.random.key(0), (3, 1, 32, 32, 3))
    grads = jax.random.normal(jax.random.key(1), images.shape)
    state = m.init_state(images)
    new, _ = m.update_images(images, state.opt_state, grads)
    # by hand: buf <- 0.5 buf + g_c (g_c = class c's slice only); x <- x - lr buf, for c = 0, 1, 2
    x, buf = np.asarray(images).copy(), np.zeros(images.shape)
    for c in range(3):
        g = np.zeros(images.shape)
        g[c] = np.asarray(grads)[c]
        buf = 0.5 * buf + g
        x = x - 0.1 * buf
    np.testing.assert_allclose(new, x, atol=1e-5)
    # class 0 moved three times (its own step and the stale momentum of two later steps)
    np.testing.assert_allclose(new[0], np.asarray(images)[0] - 0.1 * 1.75 * np.asarray(grads)[0], atol=1e-5)


def test_partitions_disjoint_covering(tiny_data):
    cfg = tiny_cfg("idc", ipc=1, subset_k=2)
    real, syn = make_partitions(cfg, tiny_data.class_indices())
    assert real.shape == (3, 2, 8) and syn.shape == (3, 2, 2)
    for c in range(3):
        assert sorted(real[c].ravel().tolist()) == np.flatnonzero(tiny_data.train_y == c).tolist()
        assert sorted(syn[c].ravel().tolist()) == [0, 1, 2, 3]
    r2, s2 = make_partitions(cfg, tiny_data.class_indices())
    np.testing.assert_array_equal(real, r2)


@pytest.mark.parametrize("method", ["dc", "idc"])  # DSA's iteration differs by its draws only: test_matching
def test_iteration_runs_and_matches_the_partitions_of_its_context(method, tiny_data):
    cfg = tiny_cfg(method, subset_k=2)
    m = make_method(cfg, DataSpec(num_classes=3))
    ctx = make_context(cfg, tiny_data)
    state0 = m.init_state(m.init_images(tiny_data, jax.random.key(0)))
    images0 = np.asarray(state0.images)
    step = jax.jit(m.iteration)
    state = state0
    for it in range(2):
        state, metrics = step(state, ctx, jax.random.fold_in(jax.random.key(1), it))
    assert int(state.iteration) == 2
    assert np.isfinite(np.asarray(state.images)).all()
    assert not np.allclose(np.asarray(state.images), images0)
    assert float(metrics["loss_subset"]) > 0 and float(metrics["lambda"]) == pytest.approx(0.5)
    # the subset terms pair the real and synthetic subsets the context holds (drawn once, fixed for the run): the
    # same iteration again gives the same images, and with the synthetic subsets swapped between the pairs, others
    once = lambda c: np.asarray(step(state0, c, jax.random.key(1))[0].images)  # noqa: E731
    np.testing.assert_array_equal(once(ctx), once(ctx))
    assert not np.allclose(once(ctx), once(ctx._replace(syn_part=ctx.syn_part[:, ::-1])))


def test_the_subset_terms_leave_the_whole_class_draws_as_the_base_methods(tiny_data):
    # K = 2 with lambda > 0 adds its terms; its whole-class term draws the same real batches and augmentation keys as
    # K = 1 from the same key, so L_all is the base method's to the bit, and only the subset term changes the gradient
    ms, xs, outs = [], [], []
    for k in (1, 2):
        cfg = tiny_cfg("dc", subset_k=k, subset_lambda=1.0, class_chunk=0)
        m = make_method(cfg, DataSpec(num_classes=3))
        ctx = make_context(cfg, tiny_data)
        images = m.init_images(tiny_data, jax.random.key(0))
        params, _ = m.net.init(jax.random.key(2))
        xs.append(m.match_inputs(images, ctx, jax.random.key(5)))
        outs.append(jax.jit(lambda im, p: m.match(im, p, ctx, jax.random.key(5), 0.5))(images, params))
        ms.append(m)
    np.testing.assert_array_equal(np.asarray(xs[0].real), np.asarray(xs[1].real))
    np.testing.assert_array_equal(jax.random.key_data(xs[0].k_all), jax.random.key_data(xs[1].k_all))
    (g1, (la1, ls1)), (g2, (la2, ls2)) = outs
    np.testing.assert_array_equal(np.asarray(la1), np.asarray(la2))
    assert float(np.asarray(ls1).sum()) == 0.0 and (np.asarray(ls2) > 0).all()
    assert not np.allclose(np.asarray(g1), np.asarray(g2))


def test_subset_only_skips_the_whole_class_term(tiny_data):
    cfg = tiny_cfg("dc", subset_k=2, subset_only=True)
    m = make_method(cfg, DataSpec(num_classes=3))
    state = m.init_state(m.init_images(tiny_data, jax.random.key(0)))
    _, metrics = jax.jit(m.iteration)(state, make_context(cfg, tiny_data), jax.random.key(5))
    assert float(metrics["loss_all"]) == 0.0 and float(metrics["loss_subset"]) > 0


def test_k_must_divide_the_synthetic_count():
    with pytest.raises(ConfigError, match="does not divide"):
        make_config("dc", 10, "cpu", subset_k=3)
    with pytest.raises(ConfigError, match="does not divide"):
        make_config("idc", 1, "cpu", subset_k=3)  # 4 decoded images
    assert make_config("idc", 1, "cpu", subset_k=4).syn_per_class == 4


# dc: one vmap over all 3 classes on the GPU's form (xla_gemm: the per-class kernel gradients as batched gemms)
# against XLA's own convolution; idc (decode, the image cap, augmentation): a lax.map over chunks of 2 classes plus
# a remainder of 1, the form of the cpu preset; split (--syn-chunk): the real side one class per program, then the
# synthetic side of all classes vmapped on xla_gemm (the GPU's split form; its siamese draw: test_matching)
@pytest.mark.parametrize("method,chunk,conv,syn", [("dc", 0, "xla_gemm", FUSED), ("dc", 1, "xla_gemm", 0),
                                                   pytest.param("idc", 2, "auto", FUSED, marks=pytest.mark.slow)])
def test_chunked_per_class_gradients_equal_the_straightforward_joint_gradient(method, chunk, conv, syn, tiny_data):
    """The fast forms (per-class gradients, vmapped over chunks of classes; split, the real side's gradients first)
    against grad of the summed loss of all classes computed in one vmap and one jax.grad, from the same random
    draws (those `match_inputs` made), on XLA's convolution where the fast form runs on xla_gemm."""
    import jax.numpy as jnp

    from sm_jax.matching import class_match

    cfg = tiny_cfg(method, subset_k=2, **(dict(max_syn_per_class=6, aug_drop=dsa_only("crop")) if method == "idc"
                                          else {}))
    m = make_method(cfg.replace(conv_impl="xla" if conv != "auto" else "auto"), tiny_data.spec)
    ctx = make_context(cfg, tiny_data)
    images = m.init_images(tiny_data, jax.random.key(1)) + 0.05  # off the init so IDC's clamp does not bind
    params = m.net.init(jax.random.key(2))[0]
    key, lam = jax.random.key(3), 0.7
    c = images.shape[0]

    def reference(images):
        xs = m.match_inputs(images, ctx, key)  # the draws (they do not depend on the images' values)
        match = lambda r, s, y, k: class_match(m.apply_fn, m.dist, m.match_policy, params, r, s, y, k)  # noqa
        syn = m.decode(images)
        syn_all = jnp.stack([m.select_syn(s, k) for s, k in zip(syn, xs.k_syn)])
        syn_sub = syn[jnp.arange(c)[:, None, None], xs.syn_part]
        la = jax.vmap(match)(xs.real, syn_all, jnp.arange(c), xs.k_all)
        labels = jnp.broadcast_to(jnp.arange(c)[:, None], (c, 2))
        ls = jax.vmap(jax.vmap(match))(xs.real_sub, syn_sub, labels, xs.k_sub)
        return la.sum() + lam * ls.sum()

    want = jax.jit(jax.grad(reference))(images)
    mc = make_method(cfg.replace(class_chunk=chunk, syn_chunk=syn, conv_impl=conv), tiny_data.spec)
    assert mc.syn_chunk == syn
    got, (la, ls) = jax.jit(mc.match)(images, params, ctx, key, lam)
    assert la.shape == (c,) and ls.shape == (c, 2)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6 * float(jnp.abs(want).max()))


def test_match_inputs_draw_each_class_from_its_own_images_and_each_subset_from_its_partition(tiny_data):
    cfg = tiny_cfg("dsa", subset_k=2)
    m = make_method(cfg, tiny_data.spec)
    ctx = make_context(cfg, tiny_data)
    xs = m.match_inputs(m.init_images(tiny_data, jax.random.key(1)), ctx, jax.random.key(3))
    train = np.asarray(m.normalize(jnp.asarray(tiny_data.train_x, jnp.float32) / 255.0))
    flat = train.reshape(len(train), -1)

    def rows_of(batch):  # the training rows each image of a batch is (every tiny image is distinct)
        d = ((np.asarray(batch).reshape(len(batch), 1, -1) - flat[None]) ** 2).sum(-1)
        assert np.allclose(d.min(1), 0, atol=1e-6)
        return d.argmin(1)

    c = tiny_data.num_classes
    assert xs.real.shape[:2] == (c, cfg.batch_real) and xs.real_sub.shape[:3] == (c, 2, cfg.subset_real)
    for ci in range(c):
        assert (np.asarray(tiny_data.train_y)[rows_of(xs.real[ci])] == ci).all()
        for k in range(2):
            members = set(np.asarray(ctx.real_part[ci, k]).tolist())
            assert set(rows_of(xs.real_sub[ci, k]).tolist()) <= members
    keys = np.concatenate([jax.random.key_data(getattr(xs, n)).reshape(-1, 2) for n in ("k_all", "k_sub", "k_syn")])
    assert len({tuple(k) for k in keys.tolist()}) == len(keys)  # every term has its own draw
