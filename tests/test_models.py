import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sm_jax.config import Config, make_config
from sm_jax.errors import ConfigError
from sm_jax.models import CONVS, Net, build, cross_entropy, denormalize, normalize, resolve_conv
from sm_jax.models.conv_ops import conv3x3_instancenorm
from sm_jax.models.layers import avg_pool2


def test_convnet3_parameter_count_and_shapes():
    model = build("convnet")
    params = jax.eval_shape(lambda: Net(model).init(jax.random.key(0))[0])  # shapes only: nothing to compute
    assert sum(x.size for x in jax.tree.leaves(params)) == 320_010
    assert params["conv0"]["kernel"].shape == (3, 3, 3, 128)
    assert params["fc"]["kernel"].shape == (2048, 10)
    assert jax.eval_shape(model.apply, {"params": params}, jnp.zeros((2, 32, 32, 3))).shape == (2, 10)


def test_init_is_pytorch_uniform_with_fan_in_bounds():
    params = jax.jit(Net(build("convnet")).init)(jax.random.key(1))[0]
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
    model = build("convnet", width=4, depth=1)
    params = Net(model).init(jax.random.key(2))[0]
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
    p = Net(build("convnet", width=16, depth=2, norm="none")).init(jax.random.key(0))[0]
    assert set(p) == {"conv0", "conv1", "fc"} and p["fc"]["kernel"].shape == (8 * 8 * 16, 10)
    with pytest.raises(ValueError, match="unknown norm"):
        build("convnet", norm="spectral")
    with pytest.raises(ValueError, match="unknown conv implementation"):
        build("convnet", conv_impl="fft")
    assert resolve_conv("auto") == "fast"  # the tests run on CPU
    # a GPU: the matching network's kernel gradients as gemms, networks trained together as gemms throughout, a
    # network alone on cuDNN's own
    assert [resolve_conv("auto", p) for p in ("cpu", "cuda", "gpu", "tpu")] == ["fast", "xla_gemm", "xla_gemm", "xla"]
    assert [resolve_conv("auto", "cuda", v) for v in ("batched", "none")] == ["gemm", "xla"]
    assert resolve_conv("auto", "cpu", "batched") == "fast" and resolve_conv("patches", "cuda", "none") == "patches"
    with pytest.raises(ValueError, match="unknown vmap role"):
        resolve_conv("auto", "cuda", "sometimes")
    with pytest.raises(ConfigError, match="unknown conv implementation 'fft'; choose one of auto, fast"):
        make_config("dc", 10, conv_impl="fft")  # the config's choices are the registry's
    assert make_config("dc", 10, conv_impl="winograd").conv_impl == "winograd" and Config().conv_impl == "auto"
    with pytest.raises(ValueError, match="unknown model 'resnet99'"):
        build("resnet99")
    # ConvNet-2 of width 16 with instance norm, by hand: conv 3x3x3x16 + 16, norm scale + bias 2 x 16, conv
    # 3x3x16x16 + 16, norm 2 x 16, linear 8*8*16 x 10 + 10
    p = Net(build("convnet", width=16, depth=2)).init(jax.random.key(0))[0]
    assert sum(a.size for a in jax.tree.leaves(p)) == 448 + 32 + 2320 + 32 + 10250


# Parameter counts of the official definitions (DC/DSA code, networks.py) for 32x32 RGB inputs and 10 classes,
# computed by hand from their layers (weights + biases):
#   MLP: Linear(3072, 128) + Linear(128, 128) + Linear(128, 10) = 393,344 + 16,512 + 1,290 = 411,146
#   LeNet: Conv2d(3, 6, 5) + Conv2d(6, 16, 5) + Linear(400, 120) + Linear(120, 84) + Linear(84, 10)
#          = 456 + 2,416 + 48,120 + 10,164 + 850 = 62,006
@pytest.mark.parametrize("name,count", [("mlp", 411_146), ("lenet", 62_006)])
def test_zoo_parameter_counts_and_one_step_lowers_the_loss(name, count):
    model = build(name)
    params = Net(model).init(jax.random.key(0))[0]
    assert sum(p.size for p in jax.tree.leaves(params)) == count
    x = jax.random.normal(jax.random.key(1), (16, 32, 32, 3))
    y = jnp.arange(16) % 10

    def loss(p):
        return cross_entropy(model.apply({"params": p}, x), y)

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    stepped = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
    assert jax.eval_shape(model.apply, {"params": params}, x).shape == (16, 10)
    assert float(jax.jit(loss)(stepped)) < float(value)


def _xla_conv(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision="highest")


@pytest.mark.parametrize("shape", [(2, 8, 8, 16), (2, 8, 6, 3), (2, 5, 5, 16)])  # Winograd / RGB / odd-size paths
def test_convolutions_agree_with_xla_to_second_order(shape):
    """Every implementation is XLA's convolution: values, both first-order gradients, and the gradient w.r.t. the
    input of a function of the kernel gradient (what gradient matching differentiates)."""
    x = jax.random.normal(jax.random.key(0), shape)
    k = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], 8)) / np.sqrt(9 * shape[-1])
    t = jax.random.normal(jax.random.key(2), (*shape[:-1], 8))

    def derivatives(conv):
        loss = lambda x, k: jnp.sum(jnp.tanh(conv(x, k)) * t)  # noqa: E731
        kernel_grad_norm = lambda x: jnp.sum(jax.grad(loss, 1)(x, k) ** 2)  # noqa: E731
        return conv(x, k), *jax.grad(loss, (0, 1))(x, k), jax.grad(kernel_grad_norm)(x)

    derivatives = jax.jit(derivatives, static_argnums=0)  # shapes must stay static under jit
    expected = derivatives(_xla_conv)
    for name, conv in CONVS.items():
        if name == "winograd" and (shape[1] % 2 or shape[2] % 2):
            continue  # plain Winograd needs even sizes; `fast` falls back there
        for what, a, b in zip(("value", "d/dx", "d/dkernel", "second order"), derivatives(conv.conv3x3), expected):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()),
                                       err_msg=f"{name} {what}")


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 5, 7, 2)])
def test_fused_conv_instancenorm_agrees_with_conv_then_norm_to_second_order(shape):
    """The RGB layer's fused form is conv + bias + instance norm, whatever the bias: values, the gradients w.r.t.
    input, kernel and affine parameters, and the input gradient of a function of the kernel gradient."""
    x = jax.random.normal(jax.random.key(0), shape) + 0.5  # a mean away from 0 exercises the centring
    k = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], 8)) / np.sqrt(9 * shape[-1])
    b, s, sh = (jax.random.normal(jax.random.key(i), (8,)) for i in (2, 3, 4))
    t = jax.random.normal(jax.random.key(5), (*shape[:-1], 8))

    def reference(x, k, s, sh):
        y = _xla_conv(x, k) + b
        mean = y.mean(axis=(1, 2), keepdims=True)
        var = ((y - mean) ** 2).mean(axis=(1, 2), keepdims=True)
        return (y - mean) / jnp.sqrt(var + 1e-5) * s + sh

    def derivatives(f):
        loss = lambda x, k, s, sh: jnp.sum(jnp.tanh(f(x, k, s, sh)) * t)  # noqa: E731
        kernel_grad_norm = lambda x: jnp.sum(jax.grad(loss, 1)(x, k, s, sh) ** 2)  # noqa: E731
        return f(x, k, s, sh), *jax.grad(loss, (0, 1, 2, 3))(x, k, s, sh), jax.grad(kernel_grad_norm)(x)

    derivatives = jax.jit(derivatives, static_argnums=0)
    names = ("value", "d/dx", "d/dkernel", "d/dscale", "d/dshift", "second order")
    for what, a, e in zip(names, derivatives(conv3x3_instancenorm), derivatives(reference)):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4 * float(jnp.abs(e).max()), err_msg=what)


def test_avg_pool2_hand_values():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    expected = np.asarray(x).reshape(2, 2, 2, 2, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(avg_pool2(x), expected)
    assert float(avg_pool2(x)[0, 0, 0, 0]) == (0 + 3 + 12 + 15) / 4


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
