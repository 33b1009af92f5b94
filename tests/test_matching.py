import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sm_jax.matching import (
    class_match,
    cosine_distance,
    lambda_schedule,
    make_partition,
    matching_losses,
    mse_distance,
    real_grads,
    sample_rows,
    syn_match,
)
from sm_jax.methods import DSA, IDC
from sm_jax.models import Net, build


def test_cosine_distance_hand_computed():
    # dense kernel (in=2, out=2): rows per OUTPUT unit are the columns
    a = {"fc": {"kernel": jnp.array([[1.0, 0.0], [0.0, 1.0]]), "bias": jnp.array([5.0, 5.0])}}
    b = {"fc": {"kernel": jnp.array([[1.0, 1.0], [1.0, -1.0]]), "bias": jnp.array([-1.0, 3.0])}}
    # output 0: a=(1,0), b=(1,1) -> cos = 1/sqrt2; output 1: a=(0,1), b=(1,-1) -> cos = -1/sqrt2
    expected = (1 - 1 / (np.sqrt(2) + 1e-6)) + (1 + 1 / (np.sqrt(2) + 1e-6))
    np.testing.assert_allclose(cosine_distance(a, b), expected, rtol=1e-6)


def test_cosine_conv_rows_are_output_channels():
    k = jax.random.normal(jax.random.key(0), (3, 3, 2, 4))  # HWIO
    scale = jnp.array([1.0, 2.0, 3.0, 4.0])  # per-output-channel scaling keeps each row's direction
    assert float(cosine_distance({"k": k}, {"k": k * scale})) < 1e-5
    in_scale = jnp.array([1.0, 5.0])[None, None, :, None]  # per-input scaling changes directions
    assert float(cosine_distance({"k": k}, {"k": k * in_scale})) > 1e-2


def test_cosine_layernorm_rows_are_channels():
    # the official ConvNet's layer norm holds a (C, H, W) scale; distance_wb compares it per channel (C rows of
    # H * W). sm_jax holds it as (H, W, C). Built by hand: channel 0 of b is channel 0 of a scaled (cos = 1),
    # channel 1 of b is channel 1 of a negated (cos = -1), so the official distance is 0 + 2 = 2. Compared per
    # spatial row (H rows of W * C) instead, each row mixes both channels and the distance is not 2.
    chw_a = np.arange(1.0, 1.0 + 2 * 2 * 3).reshape(2, 2, 3)  # (C=2, H=2, W=3)
    chw_b = chw_a * np.array([3.0, -1.0])[:, None, None]
    hwc = lambda t: jnp.asarray(np.moveaxis(t, 0, -1))  # noqa: E731
    d = float(cosine_distance({"ln": {"scale": hwc(chw_a)}}, {"ln": {"scale": hwc(chw_b)}}))
    np.testing.assert_allclose(d, 2.0, atol=1e-5)
    # random (C=4, H=3, W=5) tensors against the official formula written out per channel
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 4, 3, 5))
    official = sum(1 - a[c].ravel() @ b[c].ravel() / (np.linalg.norm(a[c]) * np.linalg.norm(b[c]) + 1e-6)
                   for c in range(4))
    np.testing.assert_allclose(float(cosine_distance({"s": hwc(a)}, {"s": hwc(b)})), official, rtol=1e-5)


def test_mse_distance_conv_kernels_only_and_a_sum():
    a = {"conv": {"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.zeros(2)}, "fc": {"kernel": jnp.zeros((4, 2))}}
    b = {"conv": {"kernel": jnp.zeros((3, 3, 1, 2)), "bias": jnp.ones(2)}, "fc": {"kernel": jnp.ones((4, 2))}}
    assert float(mse_distance(a, b)) == 18.0
    # IDC's matchloss skips only 1-D and 2-D gradients: layer norm's (H, W, C) scale counts, as a conv kernel does
    a["ln"], b["ln"] = {"scale": jnp.full((2, 2, 3), 2.0)}, {"scale": jnp.zeros((2, 2, 3))}
    assert float(mse_distance(a, b)) == 18.0 + 12 * 4.0


def small_net():
    model = build("convnet", num_classes=3, width=8, depth=1)
    params = Net(model).init(jax.random.key(0))[0]
    return (lambda p, x: model.apply({"params": p}, x)), params


@pytest.mark.parametrize("dist,policy", [(mse_distance, IDC.match_policy), (cosine_distance, DSA.match_policy)])
def test_loss_zero_for_identical_batches(dist, policy):
    apply_fn, params = small_net()
    x = jax.random.normal(jax.random.key(1), (5, 32, 32, 3))
    d = jax.jit(lambda x, k: class_match(apply_fn, dist, policy, params, x, x, jnp.int32(1), k))(x, jax.random.key(2))
    if dist is mse_distance:
        assert float(d) == 0.0
    else:  # only the 1e-6 in the denominator separates it from 0
        assert 0.0 <= float(d) < 1e-3


def test_real_gradient_is_constant_and_syn_gradient_flows():
    apply_fn, params = small_net()
    real = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
    syn = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    f = lambda r, s: class_match(apply_fn, mse_distance, (), params, r, s, jnp.int32(0), jax.random.key(0))
    g_real, g_syn = jax.jit(jax.grad(f, argnums=(0, 1)))(real, syn)
    assert float(jnp.abs(g_real).max()) == 0.0
    assert float(jnp.abs(g_syn).max()) > 0.0


def test_split_sides_compose_to_the_pair_under_one_siamese_draw():
    """`syn_match(real_grads(real), syn)` (the split form's two programs; `class_match` is that composition) against
    the pair written out here: one DSA draw applied to both batches, the real batch's parameter gradient a
    constant, the distance to the synthetic batch's; value and gradient w.r.t. the synthetic images."""
    from sm_jax.augmentation import apply_policy, sample_policy
    from sm_jax.matching import param_grad

    apply_fn, params = small_net()
    real = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
    syn = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    policy, label = DSA.match_policy, jnp.int32(2)

    def pair(s, key):  # the siamese pair by hand: one draw, both sides
        draw = sample_policy(key, policy, 1, real.shape[1:3])
        r, s = apply_policy(policy, draw, real), apply_policy(policy, draw, s)
        g_real = jax.lax.stop_gradient(param_grad(apply_fn, params, r, jnp.full((6,), label)))
        return cosine_distance(g_real, param_grad(apply_fn, params, s, jnp.full((2,), label)))

    @jax.jit
    def both(key):
        target = real_grads(apply_fn, policy, params, real, label, key)
        split = lambda s: syn_match(apply_fn, cosine_distance, policy, params, target, s, label, key)  # noqa: E731
        joined = lambda s: class_match(apply_fn, cosine_distance, policy, params, real, s, label, key)  # noqa: E731
        return (jax.value_and_grad(pair)(syn, key), jax.value_and_grad(split)(syn),
                jax.value_and_grad(joined)(syn))

    for seed in range(3):
        (want, g_want), *forms = both(jax.random.key(seed))
        assert float(want) > 1e-3 and float(jnp.abs(g_want).max()) > 0
        for got, g_got in forms:
            np.testing.assert_allclose(got, want, rtol=1e-5)
            np.testing.assert_allclose(g_got, g_want, rtol=1e-4, atol=1e-6 * float(jnp.abs(g_want).max()))


@pytest.mark.parametrize("dist,policy", [(cosine_distance, DSA.match_policy),
                                         pytest.param(mse_distance, IDC.match_policy, marks=pytest.mark.slow)])
def test_vmapped_matching_equals_python_loop(dist, policy):
    apply_fn, params = small_net()
    c, k = 3, 2
    real_all = jax.random.normal(jax.random.key(1), (c, 6, 32, 32, 3))
    syn_all = jax.random.normal(jax.random.key(2), (c, 4, 32, 32, 3))
    # the shapes of the whole-class pair, so one reference program serves both
    real_sub = jax.random.normal(jax.random.key(3), (c, k, 6, 32, 32, 3))
    syn_sub = jax.random.normal(jax.random.key(5), (c, k, 4, 32, 32, 3))
    key = jax.random.key(4)
    la, ls = jax.jit(matching_losses, static_argnums=(0, 1, 2))(apply_fn, dist, policy, params, real_all, syn_all,
                                                                real_sub, syn_sub, key)
    ref_fn = jax.jit(class_match, static_argnums=(0, 1, 2))
    k_all, k_sub = jax.random.split(key)
    keys_all = jax.random.split(k_all, c)
    keys_sub = jax.random.split(k_sub, c * k).reshape(c, k)
    for ci in range(c):
        ref = ref_fn(apply_fn, dist, policy, params, real_all[ci], syn_all[ci], jnp.int32(ci), keys_all[ci])
        np.testing.assert_allclose(la[ci], ref, rtol=2e-4, atol=1e-5)
        for ki in range(k):
            ref = ref_fn(apply_fn, dist, policy, params, real_sub[ci, ki], syn_sub[ci, ki], jnp.int32(ci),
                         keys_sub[ci, ki])
            np.testing.assert_allclose(ls[ci, ki], ref, rtol=2e-4, atol=1e-5)


def test_lambda_schedule_decays_linearly_to_zero():
    assert lambda_schedule(2.0, 0, 100) == 2.0
    assert lambda_schedule(2.0, 25, 100) == 1.5
    assert lambda_schedule(2.0, 100, 100) == 0.0


def test_partition_disjoint_covering_and_seeded():
    members = np.arange(100, 111)  # 11 items into 3 subsets: sizes 4, 4, 3
    part = make_partition(np.random.default_rng(0), members, 3)
    assert part.shape == (3, 4)
    flat = part[part >= 0]
    assert sorted(flat.tolist()) == members.tolist()
    assert (part >= 0).sum(1).tolist() == [4, 4, 3]
    np.testing.assert_array_equal(part, make_partition(np.random.default_rng(0), members, 3))
    assert not np.array_equal(part, make_partition(np.random.default_rng(1), members, 3))
    with pytest.raises(ValueError):
        make_partition(np.random.default_rng(0), members, 12)


def test_sample_rows_without_replacement_from_valid_members():
    members = jnp.array([7, 3, 9, -1, -1, 11])
    for s in range(10):
        rows = np.asarray(sample_rows(jax.random.key(s), members, 4))
        assert sorted(rows.tolist()) == [3, 7, 9, 11]
    seen = {tuple(np.asarray(sample_rows(jax.random.key(s), members, 2)).tolist()) for s in range(40)}
    assert len(seen) > 6  # random, not a fixed choice
