import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sm_jax import augmentation as aug


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
    apply = jax.jit(lambda p, x: aug.apply_policy(aug.DSA_POLICY, p, x))
    for seed in range(12):  # covers every DSA op
        p = aug.sample_policy(jax.random.key(seed), aug.DSA_POLICY, 1)
        ra, sa = apply(p, real), apply(p, syn)
        np.testing.assert_array_equal(ra[0], sa[0])
        # one draw for the whole batch: image i is transformed exactly as if it were alone
        np.testing.assert_allclose(ra[3], apply(p, real[3:4])[0], atol=1e-6)


def test_per_sample_draws_differ_and_choice_is_per_batch():
    p = aug.sample_policy(jax.random.key(0), aug.IDC_EVAL_POLICY, 64)
    assert p[1]["color"]["brightness"].shape == (64,)
    assert len(np.unique(np.asarray(p[1]["color"]["brightness"]))) == 64
    assert p[2]["choice"].shape == ()
    choices = {int(aug.sample_policy(jax.random.key(s), aug.DSA_POLICY, 1)[0]["choice"]) for s in range(60)}
    assert choices == set(range(6))


def test_augmentation_is_differentiable():
    x = images(2)
    policy = aug.DSA_POLICY + aug.IDC_MATCH_POLICY
    grad = jax.jit(jax.grad(lambda x, p: jnp.sum(aug.apply_policy(policy, p, x) ** 2)))
    for seed in range(6):
        g = grad(x, aug.sample_policy(jax.random.key(seed), policy, 2))
        assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0


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
