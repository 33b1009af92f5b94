import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sm_jax.models import cross_entropy, denormalize, init_params, make_model, normalize


def test_convnet3_parameter_count_and_shapes():
    model = make_model()
    params = init_params(model, jax.random.key(0))
    assert sum(x.size for x in jax.tree.leaves(params)) == 320_010
    assert params["conv0"]["kernel"].shape == (3, 3, 3, 128)
    assert params["fc"]["kernel"].shape == (2048, 10)
    assert model.apply({"params": params}, jnp.zeros((2, 32, 32, 3))).shape == (2, 10)


def test_init_is_pytorch_uniform_with_fan_in_bounds():
    params = init_params(make_model(), jax.random.key(1))
    for layer, fan_in in [("conv0", 27), ("conv1", 1152), ("conv2", 1152), ("fc", 2048)]:
        bound = 1 / np.sqrt(fan_in)
        for name in ("kernel", "bias"):
            w = np.asarray(params[layer][name])
            assert np.abs(w).max() <= bound
            if w.size >= 100:  # a large uniform sample fills its range, mean near 0
                assert np.abs(w).max() > 0.95 * bound
                assert abs(w.mean()) < 0.2 * bound
    assert np.all(np.asarray(params["norm0"]["scale"]) == 1) and np.all(np.asarray(params["norm0"]["bias"]) == 0)


def test_instance_norm_uses_eps_1e5_and_biased_variance():
    model = make_model(width=4, depth=1)
    params = init_params(model, jax.random.key(2))
    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
    conv = jax.lax.conv_general_dilated(x, params["conv0"]["kernel"], (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["conv0"]["bias"]
    mean = conv.mean(axis=(1, 2), keepdims=True)
    var = ((conv - mean) ** 2).mean(axis=(1, 2), keepdims=True)
    h = jax.nn.relu((conv - mean) / jnp.sqrt(var + 1e-5))
    h = h.reshape(2, 16, 2, 16, 2, 4).mean(axis=(2, 4)).reshape(2, -1)
    expected = h @ params["fc"]["kernel"] + params["fc"]["bias"]
    np.testing.assert_allclose(model.apply({"params": params}, x), expected, rtol=1e-4, atol=1e-5)


def test_options_and_errors():
    p = init_params(make_model(width=16, depth=2, norm="none"), jax.random.key(0))
    assert set(p) == {"conv0", "conv1", "fc"} and p["fc"]["kernel"].shape == (8 * 8 * 16, 10)
    with pytest.raises(ValueError, match="unknown norm"):
        make_model(norm="batchnorm")


def test_cross_entropy_hand_value_and_mask():
    logits = jnp.array([[0.0, 0.0], [1.0, 0.0]])
    y = jnp.array([0, 0])
    expected = (np.log(2) + np.log(1 + np.exp(-1))) / 2
    np.testing.assert_allclose(cross_entropy(logits, y), expected, rtol=1e-6)
    np.testing.assert_allclose(cross_entropy(logits, y, jnp.array([1.0, 0.0])), np.log(2), rtol=1e-6)


def test_normalize_roundtrip():
    x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))
    np.testing.assert_allclose(denormalize(normalize(x)), x, atol=1e-6)
    np.testing.assert_allclose(normalize(jnp.full((1, 1, 1, 3), 0.4914))[..., 0], 0.0, atol=1e-6)
