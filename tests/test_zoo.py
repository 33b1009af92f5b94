"""The model zoo: official parameter counts, training, batch norm carried functionally, matching with every norm."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sm_jax.models import ARCHS, CONVS, EVAL_POOLS, arch_names, make_net
from sm_jax.models.norms import BatchNorm
from sm_jax.training import sgd, train_step

# Parameter counts (weights + biases; batch norm's running statistics are buffers, not parameters) of the official
# definitions for 32x32 RGB inputs and 10 classes, computed by hand from the layers of the DC/DSA code's
# networks.py (IDC's models/resnet_ap.py for resnet10_ap):
#   ConvNet-3 (width 128, instance norm): conv 3->128 (3,584) + 2 x conv 128->128 (147,584) + 3 norms (256 each)
#     + Linear(128*4*4, 10) (20,490) = 320,010. Width w: 27w + w + 2(9w^2 + w) + 6w + 160w + 10.
#   ConvNetD1: 3,584 + 256 + Linear(128*16*16, 10) 327,690 = 331,530; D4: 3,584 + 3 x 147,584 + 1,024 + 5,130.
#   ConvNetNN: 320,010 - 768 (no norms); ConvNetLN: LayerNorm over (C, H, W), 2CHW parameters per layer:
#     319,242 + 2 x 128 x (32*32 + 16*16 + 8*8) = 663,306; ConvNetNP: 3,584 + 2 x 147,584 + 768 + Linear(128*32*32,
#     10) 1,310,730 = 1,610,250.
#   AlexNet: conv 5x5 3->128 (9,728), 5x5 128->192 (614,592), 3x3 192->256 (442,624), 256->192 (442,560),
#     192->192 (331,968), Linear(192*4*4, 10) (30,730) = 1,872,202; AlexNetBN: + 2 x (128+192+256+192+192).
#   VGG-11: 8 convs 3x3 (64, 128, 256, 256, 512, 512, 512, 512: 9,220,480) + 8 norms (2 x 2,752) + Linear(512, 10)
#     = 9,231,114, the same with batch norm.
#   ResNet-18: the standard CIFAR ResNet-18 without conv biases, 11,173,962; ResNet18BN_AP flattens 512x4x4 into
#     its classifier: 11,173,962 - 5,130 + 81,930 = 11,250,762.
#   IDC ResNet-10-AP (widths 32, 64, 128, 256, no conv biases): stem 864 + 64; stage 1: 2 x 9,216 + 128; stage 2:
#     18,432 + 36,864 + 2,048 (1x1 shortcut) + 384; stage 3: 73,728 + 147,456 + 8,192 + 768; stage 4: 294,912
#     + 589,824 + 32,768 + 1,536; Linear(256, 10) 2,570 = 1,228,970.
COUNTS = {
    "convnet": 320_010, "convnetw32": 24_714, "convnetw64": 86_282, "convnetw256": 1_229_834,
    "convnetd1": 331_530, "convnetd4": 452_490, "convnetnn": 319_242, "convnetbn": 320_010, "convnetgn": 320_010,
    "convnetln": 663_306, "convnetnp": 1_610_250, "convnetmp": 320_010, "convnetas": 320_010,
    "mlp": 411_146, "lenet": 62_006, "alexnet": 1_872_202, "alexnetbn": 1_874_122, "vgg11": 9_231_114,
    "vgg11bn": 9_231_114, "resnet18": 11_173_962, "resnet18bn": 11_173_962, "resnet18bn_ap": 11_250_762,
    "resnet10_ap": 1_228_970,
}
# 28x28 grey inputs (MNIST): the first convolutions pad so that the feature maps are as for 32x32, except the
# classifier inputs that the official code sizes for 28: MLP 784 inputs, ResNet18BN_AP 512x3x3.
GREY = {"convnet": 320_010 - 2 * 9 * 128, "mlp": 784 * 128 + 128 + 16_512 + 1_290,
        "resnet18bn_ap": 11_250_762 - 2 * 9 * 64 - 512 * 7 * 10, "alexnet": 1_872_202 - 2 * 25 * 128}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_counts_equal_the_official_definitions(name):
    net = make_net(name, 10, conv_impl="xla")
    assert net.num_params() == COUNTS[name]
    assert net.has_state == ("bn" in name or name == "resnet10_ap")


# Beyond 32 pixels (the official definitions at the sizes their papers use; 10 classes unless stated):
#   ConvNetD4 at 64x64 with 200 classes (TinyImageNet): 3,584 + 3 x 147,584 + 4 x 256 + Linear(128*4*4, 200) 409,800
#     = 857,160; ConvNetD5 at 128x128 (the ImageNet subsets): 3,584 + 4 x 147,584 + 5 x 256 + Linear(2048, 10) 20,490
#     = 615,690.
#   IDC's ImageNet ResNetAP-10 (widths 64-512, GroupNorm(C, C) as instance norm, no conv biases): stages 73,728
#     + 512; 73,728 + 147,456 + 8,192 + 768; 294,912 + 589,824 + 32,768 + 1,536; 1,179,648 + 2,359,296 + 131,072
#     + 3,072; Linear(512, 10) 5,130; its stem: 3x3 at up to 128 pixels (1,728 + 128) = 4,903,242 in all, 7x7 at 224
#     (9,408 + 128) = 4,910,922.
LARGE = {("convnetd4", 64, 200): 857_160, ("convnetd5", 128, 10): 615_690,
         ("resnet10_ap_imagenet", 64, 10): 4_903_242, ("resnet10_ap_imagenet", 128, 10): 4_903_242,
         ("resnet10_ap_imagenet", 224, 10): 4_910_922}


def test_parameter_counts_beyond_32_pixels():
    for (name, side, classes), count in LARGE.items():
        depth = int(name[-1]) if name.startswith("convnetd") else 3
        net = make_net("convnet" if depth != 3 else name, classes, (side, side, 3), depth=depth, conv_impl="xla")
        assert net.num_params() == count, (name, side)
        params, state = jax.eval_shape(net.init, jax.random.key(0))
        out = jax.eval_shape(lambda p, s, x: net.apply(p, s, x)[0], params, state, jnp.zeros((2, side, side, 3)))
        assert out.shape == (2, classes)


@pytest.mark.parametrize("k,stride,pad,cin", [(3, 1, 1, 16), (3, 1, 1, 3), (3, 2, 1, 16), (5, 2, 2, 3),
                                              (1, 2, 0, 16)])
def test_zoo_convolution_equals_xla_forward_and_backward(k, stride, pad, cin):
    # the CPU forms (fast: Winograd for 3x3 stride 1 padding 1, im2col otherwise; patches: im2col throughout) and the
    # GPU ones (xla_gemm: kernel gradient as per-tap gemms; gemm: per-tap gemms throughout) against XLA's own
    # convolution: the value, the input gradient, the kernel gradient and the input gradient of a function of it
    from sm_jax.models.conv_ops import conv_native

    x = jax.random.normal(jax.random.key(0), (2, 12, 12, cin))
    w = jax.random.normal(jax.random.key(1), (k, k, cin, 8)) / k
    t = jax.random.normal(jax.random.key(2), conv_native(x, w, stride, pad).shape)
    f = lambda conv: lambda x, w: jnp.sum(jnp.tanh(conv(x, w, stride, pad)) * t)
    want = (conv_native(x, w, stride, pad), *jax.grad(f(conv_native), (0, 1))(x, w))
    # the kernel gradient's input gradient: what gradient matching differentiates
    second = lambda conv: jax.grad(lambda x: jnp.sum(jax.grad(f(conv), 1)(x, w) ** 2))(x)
    want += (second(conv_native),)
    for form in ("fast", "patches", "xla_gemm", "gemm"):
        conv = CONVS[form]
        got = (conv(x, w, stride, pad), *jax.grad(f(conv), (0, 1))(x, w), second(conv))
        for what, g, v in zip(("value", "d/dx", "d/dkernel", "second order"), got, want):
            np.testing.assert_allclose(g, v, rtol=1e-4, atol=1e-4 * max(1.0, float(jnp.abs(v).max())),
                                       err_msg=f"{form} {what}")
    with pytest.raises(ValueError, match="unknown conv implementation 'fft'"):
        make_net("vgg11", 10, conv_impl="fft")
    assert make_net("vgg11", 10, conv_impl="patches").module.conv_impl == "patches"  # the form reaches the zoo


@pytest.mark.parametrize("name", sorted(GREY))
def test_grey_28px_shapes_and_counts(name):
    net = make_net(name, 10, (28, 28, 1), conv_impl="xla")
    assert net.num_params() == GREY[name]
    params, state = jax.eval_shape(net.init, jax.random.key(0))  # shapes only
    out = jax.eval_shape(lambda p, s, x: net.apply(p, s, x)[0], params, state, jnp.zeros((2, 28, 28, 1)))
    assert out.shape == (2, 10)


def test_every_official_pool_name_resolves():
    assert set(n for pool in EVAL_POOLS.values() for n in pool) <= set(ARCHS)
    assert arch_names("M") == ("mlp", "convnet", "lenet", "alexnet", "vgg11", "resnet18")
    assert arch_names("ConvNetBN,N") == ("convnetbn", "convnetnn", "convnetln", "convnetin", "convnetgn")
    with pytest.raises(ValueError, match="unknown architecture 'Q'"):
        arch_names("convnet,Q")


# one network per code path: each family, each norm, each activation/pooling branch (ConvNets at width 8)
TRAINED = ["mlp", "lenet", "alexnetbn", "vgg11", "resnet18bn_ap", "resnet10_ap", "convnetgn", "convnetln"]
BIG = {"vgg11", "resnet18bn_ap"}  # resnet10_ap covers the residual blocks in the quick loop


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in BIG else []) for n in TRAINED])
def test_training_steps_lower_the_loss(name):
    net = make_net(name, 10, width=8, conv_impl="xla")
    params, state = net.init(jax.random.key(0))
    n = 2 if name in BIG else 8  # VGG and ResNet-18 keep their full widths: a fixed pair to fit is enough
    x = jax.random.normal(jax.random.key(1), (n, 32, 32, 3))
    y = jnp.arange(n) % 10
    tx = sgd(0.9)
    step = jax.jit(lambda p, s, o: train_step(net, tx, p, s, o, x, y, jnp.ones(n), jax.random.key(2), 0.01))
    opt = tx.init(params)
    losses = []
    for _ in range(3):
        params, state, opt, loss = step(params, state, opt)
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses


def test_batch_norm_train_and_eval_by_hand():
    x = jax.random.normal(jax.random.key(0), (5, 3, 3, 2)) * 2 + 1
    bn = BatchNorm()
    v = bn.init(jax.random.key(1), x)
    out, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
    xs = np.asarray(x).reshape(-1, 2)
    mean, var = xs.mean(0), xs.var(0)
    np.testing.assert_allclose(out, (np.asarray(x) - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    # running averages as torch: momentum 0.1, the unbiased variance
    np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 + 0.1 * xs.var(0, ddof=1), rtol=1e-5)
    v2 = {"params": v["params"], "batch_stats": upd["batch_stats"]}
    ev = bn.apply(v2, x, train=False)
    np.testing.assert_allclose(ev, (np.asarray(x) - 0.1 * mean) / np.sqrt(0.9 + 0.1 * xs.var(0, ddof=1) + 1e-5),
                               rtol=1e-4, atol=1e-5)


def test_batch_norm_statistics_change_in_train_mode_only():
    net = make_net("convnetbn", 10, width=8, conv_impl="xla")
    params, state = net.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    _, same = net.apply(params, state, x, train=False)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), same, state))
    _, moved = net.apply(params, state, x, train=True)
    assert all(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(state)))
    # evaluation mode is deterministic per image: a batch's logits do not depend on its other images
    full = net.apply(params, moved, x)[0]
    np.testing.assert_allclose(net.apply(params, moved, x[:1])[0], full[:1], rtol=1e-5, atol=1e-5)


def test_vmapped_training_of_batch_norm_networks_equals_sequential():
    from sm_jax.evaluation import train_network
    from sm_jax.training import TrainProtocol, accuracy

    # ConvNetBN's layers at a tiny size, on the evaluation's convolution (on CPU: the matmul forms, vmap-friendly)
    net = make_net("convnet", 3, width=8, depth=1, norm="batchnorm")
    x = jax.random.normal(jax.random.key(0), (6, 32, 32, 3))
    y = jnp.arange(6) % 3
    proto = TrainProtocol(epochs=1, batch=4, lr=0.05)  # 2 steps: the running statistics move twice

    def one(k):
        params, state = train_network(net, proto, x, y, k)
        return params, state, accuracy(net, params, state, x, y)

    keys = jax.random.split(jax.random.key(1), 2)
    many = jax.jit(jax.vmap(one))(keys)
    for i, k in enumerate(keys):
        single = jax.jit(one)(k)
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(many)):
            np.testing.assert_allclose(a, b[i], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["instancenorm", "batchnorm", "layernorm", "groupnorm", "none"])
def test_matching_loss_is_zero_for_identical_batches_with_every_norm(norm):
    from sm_jax.augmentation import DSA_POLICY
    from sm_jax.matching import class_match, cosine_distance

    net = make_net("convnet", 3, width=8, depth=1, norm=norm, conv_impl="xla")
    params, state = net.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, 32, 32, 3))
    state = net.apply(params, state, x, train=True)[1]  # frozen statistics, as before matching
    apply_fn = lambda p, z: net.apply(p, state, z)[0]  # noqa: E731
    same = class_match(apply_fn, cosine_distance, DSA_POLICY, params, x, x, jnp.int32(1), jax.random.key(2))
    other = class_match(apply_fn, cosine_distance, DSA_POLICY, params, x, jnp.flip(x, 1) + 0.5, jnp.int32(1),
                        jax.random.key(2))
    # 0 up to the official distance's epsilon: a row of identical gradients scores 1 - |g|^2 / (|g|^2 + 1e-6), which
    # is 1 for an all-zero row (a channel that no image activates) and ~0 for any other
    from sm_jax.augmentation import apply_policy, sample_policy
    from sm_jax.matching import _rows, param_grad

    xa = apply_policy(DSA_POLICY, sample_policy(jax.random.key(2), DSA_POLICY, 1, (32, 32)), x)
    g = param_grad(apply_fn, params, xa, jnp.full((5,), 1))
    sq = [jnp.sum(_rows(a) ** 2, -1) for a in jax.tree.leaves(g) if a.ndim > 1]
    floor = sum(float(jnp.sum(1 - n / (n + 1e-6))) for n in sq)
    assert abs(float(same) - floor) < 1e-3 and float(other) > floor + 1e-2


def test_dc_iteration_with_a_batch_norm_matching_network_freezes_real_statistics(tiny_data):
    from sm_jax.config import make_config
    from sm_jax.data import Dataset
    from sm_jax.methods import make_context, make_method
    from sm_jax.models import normalize

    assert make_config("dc", 2, "cpu", model="ConvNetBN").model == "convnetbn"
    # 4 images per class and 4 drawn per class (min(16, batch_real)): the statistics' batch is every image, in some
    # order, so the expectation needs none of the draws
    rows = np.concatenate([np.flatnonzero(tiny_data.train_y == c)[:4] for c in range(3)])
    data = Dataset(tiny_data.train_x[rows], tiny_data.train_y[rows], tiny_data.test_x, tiny_data.test_y,
                   tiny_data.class_names, "tiny4")
    # ConvNetBN's layers at a tiny width and depth
    cfg = make_config("dc", 2, "cpu", width=8, depth=1, norm="batchnorm", batch_real=4, subset_batch_real=2,
                      outer_loop=2, inner_loop=1, iterations=2)
    m = make_method(cfg, data.spec)
    assert m.batch_norm
    ctx = make_context(cfg, data)
    params, state = m.net.init(jax.random.key(0))
    frozen = m.freeze_bn(params, state, ctx, jax.random.key(1))
    # by hand: the first convolution's outputs over all 12 images; PyTorch's update from the initial (0, 1) with
    # momentum 0.1, the variance unbiased
    x = normalize(jnp.asarray(data.train_x, jnp.float32) / 255)
    h = jax.lax.conv_general_dilated(x, params["conv0"]["kernel"], (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST) + params["conv0"]["bias"]
    h = np.asarray(h, np.float64).reshape(-1, 8)
    np.testing.assert_allclose(frozen["norm0"]["mean"], 0.1 * h.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(frozen["norm0"]["var"], 0.9 + 0.1 * h.var(0, ddof=1), rtol=1e-4)
    st = m.init_state(m.init_images(data, jax.random.key(2)))
    _, metrics = jax.jit(m.iteration)(st, ctx, jax.random.key(3))
    assert all(np.isfinite(float(v)) for v in metrics.values())
