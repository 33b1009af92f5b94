import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sm_jax import augmentation as aug
from sm_jax.methods import DC, DSA, IDC

DC_MNIST = (("dc_crop_scale_rotate",),)  # DC's evaluation augmentation on MNIST


def images(n=4, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, 32, 32, 3))


def test_crop_shifts_with_zero_fill():
    x = images(1)
    out = aug.OPS["crop"][1]({"dx": jnp.array([2]), "dy": jnp.array([-3])}, x)
    expected = np.zeros((1, 32, 32, 3), np.float32)
    expected[0, :30, 3:] = np.asarray(x)[0, 2:, :29]
    np.testing.assert_array_equal(out, expected)


def test_cutout_zeroes_a_16x16_square_clipped_at_borders():
    x = jnp.ones((2, 32, 32, 3))
    out = aug.OPS["cutout"][1]({"cx": jnp.array([16, 0]), "cy": jnp.array([16, 32])}, x)
    zero = np.asarray(out[..., 0] == 0)
    assert zero[0].sum() == 256 and zero[0, 8:24, 8:24].all()
    assert zero[1].sum() == 8 * 8 and zero[1, :8, 24:].all()  # centre (0, 32): a quarter remains


def test_flip_and_color_hand_values():
    x = images(2)
    out = aug.OPS["flip"][1]({"flip": jnp.array([True, False])}, x)
    np.testing.assert_array_equal(out[0], x[0, :, ::-1])
    np.testing.assert_array_equal(out[1], x[1])
    p = {"brightness": jnp.array([0.75]), "saturation": jnp.array([0.5]), "contrast": jnp.array([0.5])}
    # saturation factor 2*0.5 = 1 and contrast factor 0.5+0.5 = 1: only the +0.25 brightness remains
    np.testing.assert_allclose(aug.OPS["color"][1](p, x), x + 0.25, atol=1e-5)
    p = {"brightness": jnp.array([0.5]), "saturation": jnp.array([0.0]), "contrast": jnp.array([0.0])}
    out = aug.OPS["color"][1](p, x)  # saturation 0 -> grey; contrast 0.5 halves deviations from the mean
    grey = np.asarray(x).mean(-1, keepdims=True)
    m = grey.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(out, np.broadcast_to((grey - m) * 0.5 + m, x.shape), atol=1e-5)


@pytest.mark.parametrize("align", [True, False])
def test_affine_identity_and_quarter_turn(align):
    x = images(1)[0]
    eye = jnp.array([[1.0, 0, 0], [0, 1.0, 0]])
    np.testing.assert_allclose(aug.affine_resample(x, eye, align), x, atol=1e-4)
    quarter = jnp.array([[0.0, -1.0, 0], [1.0, 0.0, 0]])
    out = aug.affine_resample(x, quarter, align)
    np.testing.assert_allclose(out, np.rot90(np.asarray(x), k=1, axes=(0, 1)), atol=1e-4)


def test_siamese_draw_applies_identical_transform_to_both_batches():
    real, syn = images(6, 1), images(3, 2)
    syn = syn.at[0].set(real[0])  # one image present in both batches
    apply = jax.jit(lambda p, x: aug.apply_policy(DSA.match_policy, p, x))
    drawn, seed = set(), 0
    while len(drawn) < len(DSA.match_policy[0]) and seed < 60:  # until every DSA op was drawn
        p = aug.sample_policy(jax.random.key(seed), DSA.match_policy, 1)
        drawn.add(int(p[0]["choice"]))
        seed += 1
        ra, sa = apply(p, real), apply(p, syn)
        np.testing.assert_allclose(ra[0], sa[0], atol=1e-6)  # up to rounding: color's batch reductions vectorise
        # one draw for the whole batch: image i is transformed exactly as if it were alone
        np.testing.assert_allclose(ra[3], apply(p, real[3:4])[0], atol=1e-6)
    assert drawn == set(range(len(DSA.match_policy[0])))  # the seeds drew every DSA op


def test_per_sample_draws_differ_and_choice_is_per_batch():
    p = aug.sample_policy(jax.random.key(0), IDC.eval_policy, 64)
    assert p[1]["color"]["brightness"].shape == (64,)
    assert len(np.unique(np.asarray(p[1]["color"]["brightness"]))) == 64
    assert p[2]["choice"].shape == ()
    choices = {int(aug.sample_policy(jax.random.key(s), DSA.match_policy, 1)[0]["choice"]) for s in range(60)}
    assert choices == set(range(6))


def test_augmentation_is_differentiable():
    x = images(2)
    policy = DSA.match_policy + IDC.match_policy
    grad = jax.jit(jax.grad(lambda x, p: jnp.sum(aug.apply_policy(policy, p, x) ** 2)))
    for seed in range(6):
        g = grad(x, aug.sample_policy(jax.random.key(seed), policy, 2))
        assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0


def test_a_stage_with_scale_and_rotate_resamples_once_with_the_chosen_ops_numbers():
    """The DSA stage shares one resampling between its affine ops (under vmap every branch of a switch runs):
    each op applied alone, per class with a batched choice, gives the same values and gradients (up to XLA's
    rounding: two programs; eagerly they are bit-identical)."""
    policy = DSA.match_policy
    assert {"scale", "rotate"} <= set(policy[0])
    x = images(4 * 2).reshape(4, 2, 32, 32, 3)  # (classes, batch, H, W, C)

    def alone(p, x):  # the op `choice` of the stage, by itself
        return jax.lax.switch(p[0]["choice"], [lambda x, op=op: aug.OPS[op][1](p[0][op], x) for op in policy[0]], x)

    def both(apply):
        f = jax.vmap(apply)
        return jax.jit(lambda p, x: (f(p, x), jax.grad(lambda x: jnp.sum(f(p, x) ** 3))(x)))

    shared, each = both(lambda p, x: aug.apply_policy(policy, p, x)), both(alone)
    seen = set()
    for seed in range(8):
        p = jax.vmap(lambda k: aug.sample_policy(k, policy, 1))(jax.random.split(jax.random.key(seed), 4))
        seen |= set(np.asarray(p[0]["choice"]).tolist())
        for a, b in zip(shared(p, x), each(p, x)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max()))
    assert seen == set(range(len(policy[0])))  # every op was drawn, scale and rotate included


def test_cutmix_box_and_label_weight():
    x = jnp.arange(4.0)[:, None, None, None] * jnp.ones((4, 32, 32, 3))
    valid = jnp.array([True, True, True, False])
    mixed_any = False
    for seed in range(20):
        mixed, partner, lam = aug.cutmix(jax.random.key(seed), x, valid, prob=0.5)
        assert set(np.asarray(partner[:3]).tolist()) == {0, 1, 2}  # padding row never a partner
        changed = np.asarray(mixed[..., 0] != x[..., 0])
        box = np.asarray(mixed[0, ..., 0] == x[partner[0], ..., 0]) if int(partner[0]) != 0 else None
        if box is not None:
            np.testing.assert_allclose(float(lam), 1 - box.sum() / 1024 if not np.all(box) else 0.0, atol=1e-6)
        mixed_any |= bool(changed.any())
        if float(lam) == 1.0:
            np.testing.assert_array_equal(mixed, x)
    assert mixed_any


def test_unknown_op_rejected():
    with pytest.raises(ValueError, match="unknown augmentation op"):
        aug.check_policy((("color", "blur"),))


# --- DC's evaluation augmentation (per image, not differentiable) ------------------------------------------

def _dc(op, x, **params):
    n = x.shape[0]
    strategy = {"crop": 0, "scale": 1, "rotate": 2}
    p = {"choice": jnp.full((n,), strategy[op]), "shift": jnp.zeros((n, 2), jnp.int32), "scale": jnp.ones((n, 2)),
         "angle": jnp.zeros((n,)), "noise": jax.random.split(jax.random.key(0), n)}
    p.update({k: jnp.asarray(v) for k, v in params.items()})
    return aug.OPS["dc_crop_scale_rotate"][1](p, x)


def test_dc_crop_shifts_and_fills_with_the_channel_mean():
    x = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1)
    out = _dc("crop", x, shift=[[1, -2], [0, 0]])
    mean = float(x.mean())
    expect = np.full((6, 6), mean, np.float32)
    expect[:5, 2:] = np.asarray(x[0, 1:, :4, 0])  # out[i, j] = x[i + 1, j - 2]
    np.testing.assert_allclose(out[0, ..., 0], expect)
    np.testing.assert_array_equal(out[1], x[1])


def test_dc_scale_is_a_centred_nearest_resize():
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 1))
    np.testing.assert_array_equal(_dc("scale", x, scale=[[1.0, 1.0]]), x)
    out = np.asarray(_dc("scale", x, scale=[[0.5, 1.0]])[0, ..., 0])  # rows: 8 -> 4, centred in rows 2..5
    expect = np.zeros((8, 8), np.float32)
    expect[2:6] = np.asarray(x[0, ::2, :, 0])  # nearest: source row floor(a * 8 / 4)
    np.testing.assert_allclose(out, expect)


def test_dc_rotate_turns_as_scipy_does_in_the_official_code():
    from scipy.ndimage import rotate  # DC's utils.augment: scipy's rotate of (C, H, W) over axes (-2, -1)

    x = jax.random.normal(jax.random.key(2), (1, 7, 7, 2))
    np.testing.assert_allclose(_dc("rotate", x, angle=[0.0]), x, rtol=1e-5, atol=1e-6)
    out = np.asarray(_dc("rotate", x, angle=[90.0])[0])
    official = rotate(np.asarray(x[0]).transpose(2, 0, 1), 90, axes=(-2, -1), reshape=False).transpose(1, 2, 0)
    np.testing.assert_allclose(out, official, atol=1e-5)  # a quarter turn lands on the grid: no interpolation
    assert not np.allclose(out, np.rot90(np.asarray(x[0]), 3, axes=(0, 1)), atol=1e-3)  # not the other way


def test_dc_augment_draws_one_op_per_image():
    x = jax.random.normal(jax.random.key(3), (64, 8, 8, 1))
    p = aug.sample_policy(jax.random.key(4), DC_MNIST, 64, (8, 8))[0]["dc_crop_scale_rotate"]
    assert set(np.asarray(p["choice"]).tolist()) == {0, 1, 2}
    assert set(np.asarray(p["shift"]).ravel().tolist()) <= set(range(-4, 4))
    assert set(np.asarray(p["angle"]).tolist()) <= set(range(-45, 45))
    out = np.asarray(aug.augment(jax.random.key(4), DC_MNIST, x))
    apply = aug.OPS["dc_crop_scale_rotate"][1]
    branches = [np.asarray(apply({**p, "choice": jnp.full((64,), k)}, x)) for k in range(3)]
    for i, k in enumerate(np.asarray(p["choice"])):  # each image went through the op its own choice names
        np.testing.assert_array_equal(out[i], branches[k][i])
    noisy = aug.augment(jax.random.key(5), DC.bn_eval_policy, x)
    diff = np.asarray(noisy - x).reshape(64, -1)
    small = (np.abs(diff).max(1) < 0.01) & (np.abs(diff).max(1) > 0)  # the noise images: 0.001 N(0, 1)
    assert 0 < small.sum() < 64 and np.std(diff[small]) == pytest.approx(1e-3, rel=0.2)
