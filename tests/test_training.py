import jax
import jax.numpy as jnp
import numpy as np
import optax

from sm_jax.config import make_config
from sm_jax.evaluation import train_network
from sm_jax.methods import make_method
from sm_jax.models import FnNet, Net, build
from sm_jax.training import epoch_batches, lr_at_epoch, reset_momentum, sgd, train_step


def test_fast_conv_net_equals_xla_conv_net_values_and_grads():
    x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
    y = jnp.array([0, 1, 2])
    m_p, m_x = build("convnet", width=16, conv_impl="fast"), build("convnet", width=16, conv_impl="xla")
    params = Net(m_p).init(jax.random.key(1))[0]
    loss = lambda m: (lambda p: optax.softmax_cross_entropy_with_integer_labels(m.apply({"params": p}, x), y).mean())
    np.testing.assert_allclose(jax.jit(m_p.apply)({"params": params}, x), jax.jit(m_x.apply)({"params": params}, x),
                               rtol=1e-4, atol=1e-5)
    g_p, g_x = jax.jit(jax.grad(loss(m_p)))(params), jax.jit(jax.grad(loss(m_x)))(params)
    for a, b in zip(jax.tree.leaves(g_p), jax.tree.leaves(g_x)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_networks_trained_together_on_gemms_equal_each_trained_alone_on_xla():
    """The evaluation's form for N networks under vmap (`gemm`: per-tap matrix products, no grouped convolution)
    against each network trained alone on XLA's convolution: the same trained parameters (two epochs of SGD with
    momentum, so the rounding has steps to grow in) and the same accuracy, the vmapped test pass in small steps (3
    images, the last one padded) as N networks take them (evaluation.core.TEST_BATCH // N images each)."""
    from sm_jax.training import accuracy

    m = make_method(make_config("dc", 2, "cpu", width=8, depth=2, conv_impl="xla", eval_batch=4, eval_epochs=2))
    proto = m.eval_protocol(2)
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
    y = jnp.repeat(jnp.arange(4), 2)
    tx, ty = jax.random.normal(jax.random.key(1), (20, 32, 32, 3)), jnp.arange(20) % 10
    keys = jax.random.split(jax.random.key(2), 3)
    net = make_method(make_config("dc", 2, "cpu", width=8, depth=2, conv_impl="gemm")).eval_net(None, 3)
    assert net.module.conv_impl == "gemm" and m.eval_net(None).module.conv_impl == "xla"

    def together(keys):
        trained = jax.vmap(lambda k: train_network(net, proto, x, y, k))(keys)
        return trained, jax.vmap(lambda p, s: accuracy(net, p, s, tx, ty, 3))(*trained)

    def alone(k):
        trained = train_network(m.eval_net(None), proto, x, y, k)
        return trained, accuracy(m.eval_net(None), *trained, tx, ty)

    trained, accs = jax.jit(together)(keys)
    alone = jax.jit(alone)
    for i in range(3):
        want, acc = alone(keys[i])
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda t: t[i], trained)), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert abs(float(accs[i]) - float(acc)) <= 0.051  # 20 test images: at most one flips on rounding


def test_epoch_batches_cover_each_sample_once():
    idx, w = epoch_batches(jax.random.key(0), 10, 4)
    assert idx.shape == (3, 4)
    assert sorted(np.asarray(idx)[np.asarray(w) > 0].tolist()) == list(range(10))
    assert np.asarray(w).sum() == 10 and np.asarray(w)[2, 2:].sum() == 0


def test_eval_protocol_schedules():
    dc = make_method(make_config("dc", 10, "paper"))
    p = dc.eval_protocol(300)
    # the official code lowers the lr after epoch E//2 has been trained
    np.testing.assert_allclose([float(lr_at_epoch(p, e)) for e in (0, 150, 151, 299)], [0.01, 0.01, 0.001, 0.001],
                               rtol=1e-6)
    assert p.reset_momentum_at_milestones and p.batch == 256 and p.policy == ()
    idc = make_method(make_config("idc", 10, "paper")).eval_protocol(1000)
    assert idc.milestones == ((666, 0.2), (833, 0.2)) and idc.batch == 64 and idc.cutmix_prob == 0.5
    np.testing.assert_allclose(float(lr_at_epoch(idc, 900)), 0.01 * 0.04, rtol=1e-6)
    assert make_method(make_config("dsa", 10, "paper")).eval_protocol().epochs == 1000


def test_sgd_matches_pytorch_semantics_and_momentum_reset():
    tx = sgd(momentum=0.9, weight_decay=0.1)
    p = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([0.5, 0.5])}
    s = tx.init(p)
    u1, s = tx.update(g, s, p)  # buf = g + wd p
    np.testing.assert_allclose(u1["w"], [0.6, 0.3], rtol=1e-6)
    u2, s = tx.update(g, s, p)  # buf = 0.9 buf + g + wd p
    np.testing.assert_allclose(u2["w"], [0.9 * 0.6 + 0.6, 0.9 * 0.3 + 0.3], rtol=1e-6)
    s = reset_momentum(s, jnp.array(True))
    u3, _ = tx.update(g, s, p)
    np.testing.assert_allclose(u3["w"], [0.6, 0.3], rtol=1e-6)


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    model = build("convnet", num_classes=3, width=8)
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    params = Net(model).init(jax.random.key(0))[0]
    x = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
    y = jnp.array([0, 1, 2, 0, 1, 2])
    tx = sgd(0.9, 5e-4)
    state = tx.init(params)
    step = jax.jit(lambda p, s, k: train_step(FnNet(apply_fn), tx, p, {}, s, x, y, jnp.ones(6), k, 0.05))
    losses = []
    for i in range(15):
        params, _, state, loss = step(params, state, jax.random.key(i))
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
