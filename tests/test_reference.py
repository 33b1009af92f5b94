"""Every matching loss against an independent PyTorch computation.

The reference network is ConvNet-D written from the official definitions (DC/DSA `networks.ConvNet`: conv3x3 with
bias, then the norm by name, ReLU, 2x2 average pooling; a linear classifier on the flattened (C, H, W) features),
and the distances from the official formulas: DC/DSA's `distance_wb` (1 - cos per output row; a conv weight
(O, I, h, w) and a layer norm weight (C, H, W) give one row per channel, 2-D weights are compared whole per row,
1-D ones contribute 0), IDC's `dist` summed over every weight that is neither 1-D nor 2-D (mse or l1), DM's squared
distance of mean embeddings, MTT's normalised parameter distance after an unrolled student. sm_jax's weights are
copied into it; both sides see the same real and synthetic batches with augmentation off, and the loss and its
gradient w.r.t. the synthetic images must agree to float tolerance.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sm_jax.augmentation import NO_POLICY
from sm_jax.matching import DISTANCES, class_match, mean_embedding_distance
from sm_jax.models import make_net
from sm_jax.models.norms import NORMS

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional

pytestmark = pytest.mark.torch

CLASSES, WIDTH, DEPTH, SIDE = 3, 8, 2, 16


class TorchConvNet(tnn.Module):
    """The official ConvNet-D: depth x [Conv2d(3x3, pad 1) -> norm -> ReLU -> AvgPool2d(2)] -> Linear."""

    def __init__(self, norm, classes=CLASSES, width=WIDTH, depth=DEPTH, side=SIDE):
        super().__init__()
        layers, c, h = [], 3, side
        for _ in range(depth):
            layers.append(tnn.Conv2d(c, width, 3, padding=1))
            norm_layer = {"instancenorm": lambda: tnn.GroupNorm(width, width, affine=True),
                          "batchnorm": lambda: tnn.BatchNorm2d(width),
                          "layernorm": lambda: tnn.LayerNorm([width, h, h], elementwise_affine=True),
                          "groupnorm": lambda: tnn.GroupNorm(4, width, affine=True),
                          "none": lambda: None}[norm]()
            layers += [norm_layer] if norm_layer is not None else []
            layers += [tnn.ReLU(), tnn.AvgPool2d(2, 2)]
            c, h = width, h // 2
        self.features = tnn.Sequential(*layers)
        self.classifier = tnn.Linear(width * h * h, classes)

    def embed(self, x):
        return self.features(x).flatten(1)

    def forward(self, x):
        return self.classifier(self.embed(x))


def t(a) -> "torch.Tensor":
    return torch.from_numpy(np.array(a, np.float32))


def copy_into(net: TorchConvNet, params, state=None) -> TorchConvNet:
    """sm_jax's parameters (and batch-norm statistics) into the PyTorch network, layer by layer."""
    convs = [m for m in net.features if isinstance(m, tnn.Conv2d)]
    norms = [m for m in net.features if isinstance(m, (tnn.GroupNorm, tnn.BatchNorm2d, tnn.LayerNorm))]
    with torch.no_grad():
        for i, conv in enumerate(convs):
            conv.weight.copy_(t(params[f"conv{i}"]["kernel"]).permute(3, 2, 0, 1))  # HWIO -> OIhw
            conv.bias.copy_(t(params[f"conv{i}"]["bias"]))
        for i, norm in enumerate(norms):
            p = params[f"norm{i}"]
            p = p.get("gn", p)
            to_chw = (lambda a: a.permute(2, 0, 1)) if isinstance(norm, tnn.LayerNorm) else (lambda a: a)
            norm.weight.copy_(to_chw(t(p["scale"])))
            norm.bias.copy_(to_chw(t(p["bias"])))
            if state:
                norm.running_mean.copy_(t(state[f"norm{i}"]["mean"]))
                norm.running_var.copy_(t(state[f"norm{i}"]["var"]))
        k = t(params["fc"]["kernel"])  # (H * W * C, classes), features flattened NHWC
        h = int(round((k.shape[0] / WIDTH) ** 0.5))
        net.classifier.weight.copy_(k.reshape(h, h, WIDTH, -1).permute(3, 2, 0, 1).reshape(k.shape[1], -1))
        net.classifier.bias.copy_(t(params["fc"]["bias"]))
    return net


# --- the official formulas ----------------------------------------------------------------------------------------
def distance_wb(gr, gs):
    if gr.dim() == 1:  # biases and per-channel norm parameters: 0
        return torch.zeros(())
    if gr.dim() in (3, 4):  # conv (O, I, h, w), layer norm (C, H, W): one row per output channel
        gr, gs = gr.reshape(gr.shape[0], -1), gs.reshape(gs.shape[0], -1)
    return torch.sum(1 - torch.sum(gr * gs, -1) / (torch.norm(gr, dim=-1) * torch.norm(gs, dim=-1) + 1e-6))


def idc_dist(kind):
    one = (lambda a, b: ((a - b) ** 2).sum()) if kind == "mse" else (lambda a, b: (a - b).abs().sum())
    return lambda gr, gs: one(gr, gs) if gr.dim() not in (1, 2) else torch.zeros(())


TORCH_DISTANCES = {"cosine": distance_wb, "mse": idc_dist("mse"), "l1": idc_dist("l1")}


def torch_match(net, dist, real, syn, label):
    """The official gradient matching of one class: the real gradient detached, the synthetic one differentiable."""
    params = list(net.parameters())
    y_r = torch.full((real.shape[0],), label, dtype=torch.long)
    y_s = torch.full((syn.shape[0],), label, dtype=torch.long)
    g_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(real), y_r), params)]
    g_syn = torch.autograd.grad(F.cross_entropy(net(syn), y_s), params, create_graph=True)
    return sum(dist(gr, gs) for gr, gs in zip(g_real, g_syn))


def nchw(x) -> "torch.Tensor":
    return t(np.moveaxis(np.asarray(x), -1, 1))


def batches(seed=0, real=6, syn=4):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(k1, (real, SIDE, SIDE, 3)), jax.random.normal(k2, (syn, SIDE, SIDE, 3)),
            jax.random.normal(k3, (16, SIDE, SIDE, 3)))


def close(a, b, rtol=2e-4, what=""):
    """Equal to float tolerance, relative to the reference's largest magnitude (second-order gradients sum many
    terms)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(), 1e-12)
    np.testing.assert_allclose(a / scale, b / scale, atol=rtol, rtol=0, err_msg=what)


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_gradient_matching_losses_equal_the_official_formulas(norm):
    # DC/DSA (cosine), IDC (mse, l1): loss and d loss / d syn. A batch-norm network matches in evaluation mode with
    # the running statistics of one training-mode pass over real images (the official code's freezing).
    net = make_net("convnet", CLASSES, (SIDE, SIDE, 3), WIDTH, DEPTH, norm)
    params, state = net.init(jax.random.key(1))
    real, syn, bn_batch = batches()
    ref = TorchConvNet(norm)
    if state:
        state = net.apply(params, state, bn_batch, True)[1]
        ref.train()
        copy_into(ref, params)
        with torch.no_grad():
            ref(nchw(bn_batch))
        ref.eval()
        for i, m in enumerate(m for m in ref.features if isinstance(m, tnn.BatchNorm2d)):  # the same statistics
            close(state[f"norm{i}"]["mean"], m.running_mean.numpy(), 1e-5)
            close(state[f"norm{i}"]["var"], m.running_var.numpy(), 1e-5)
    else:
        copy_into(ref, params)
    apply_fn = lambda p, x: net.apply(p, state, x)[0]  # noqa: E731
    label = 1
    for name, dist in DISTANCES.items():
        f = jax.jit(jax.value_and_grad(
            lambda s: class_match(apply_fn, dist, NO_POLICY, params, real, s, jnp.int32(label), jax.random.key(0))))
        loss, grad = f(syn)
        s_t = nchw(syn).requires_grad_(True)
        ref_loss = torch_match(ref, TORCH_DISTANCES[name], nchw(real), s_t, label)
        (ref_grad,) = torch.autograd.grad(ref_loss, s_t)
        assert float(ref_loss.detach()) > 1e-3, (norm, name)  # a loss worth comparing
        close(loss, ref_loss.detach().numpy(), 2e-5, f"{norm} {name}: loss")
        close(np.moveaxis(np.asarray(grad), -1, 1), ref_grad.numpy(), what=f"{norm} {name}: d loss / d syn")


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_dm_mean_embedding_distance_equals_the_official_formula(norm):
    # DM: a fresh network in training mode (a batch-norm network normalises each batch with its own statistics);
    # || mean embed(real) - mean embed(syn) ||^2, the real side detached
    net = make_net("convnet", CLASSES, (SIDE, SIDE, 3), WIDTH, DEPTH, norm)
    params, state = net.init(jax.random.key(2))
    real, syn, _ = batches(1)
    embed = lambda x: net.embed(params, state, x, train=True)[0]  # noqa: E731
    loss, grad = jax.jit(jax.value_and_grad(lambda s: mean_embedding_distance(embed(real), embed(s))))(syn)
    ref = copy_into(TorchConvNet(norm), params).train()
    s_t = nchw(syn).requires_grad_(True)
    ref_loss = torch.sum((ref.embed(nchw(real)).detach().mean(0) - ref.embed(s_t).mean(0)) ** 2)
    (ref_grad,) = torch.autograd.grad(ref_loss, s_t)
    close(loss, ref_loss.detach().numpy(), 2e-5)
    close(np.moveaxis(np.asarray(grad), -1, 1), ref_grad.numpy())


def test_mtt_normalised_parameter_distance_after_an_unroll_equals_the_official():
    # distill.py: a student from the expert's epoch-s parameters takes syn_steps SGD steps (lr syn_lr) on the
    # synthetic images, each step's gradient differentiable (create_graph); the loss is ||theta_N - theta_T||^2 /
    # ||theta_0 - theta_T||^2, differentiated w.r.t. the images and syn_lr. Every image in every step (batch_syn 0),
    # DSA off.
    from jax.flatten_util import ravel_pytree

    from sm_jax.augmentation import DSA_OPS
    from sm_jax.config import make_config
    from sm_jax.data import DataSpec
    from sm_jax.methods import make_method

    cfg = make_config("mtt", 2, "cpu", width=WIDTH, depth=DEPTH, syn_steps=4, zca=False, aug_drop=",".join(DSA_OPS))
    method = make_method(cfg, DataSpec(CLASSES, (SIDE, SIDE, 3)))
    p0, _ = method.net.init(jax.random.key(3))
    p1, _ = method.net.init(jax.random.key(4))
    x = jax.random.normal(jax.random.key(5), (CLASSES * 2, SIDE, SIDE, 3))
    y = jnp.repeat(jnp.arange(CLASSES), 2)
    lr = 0.05
    theta0, target = ravel_pytree(p0)[0], ravel_pytree(p1)[0]
    loss, (g_x, g_lr) = jax.jit(jax.value_and_grad(
        lambda x, lr: method.student_loss(x, y, lr, theta0, target, jax.random.key(0), x.shape[0]),
        argnums=(0, 1)))(x, jnp.float32(lr))

    ref = copy_into(TorchConvNet("instancenorm"), p0)
    names = [n for n, _ in ref.named_parameters()]
    start = [p.detach().clone() for p in ref.parameters()]
    goal = [p.detach().clone() for p in copy_into(TorchConvNet("instancenorm"), p1).parameters()]
    x_t, lr_t = nchw(x).requires_grad_(True), torch.tensor(lr, requires_grad=True)
    y_t = torch.tensor(np.asarray(y), dtype=torch.long)
    cur = [p.clone().requires_grad_(True) for p in start]
    for _ in range(cfg.syn_steps):
        ce = F.cross_entropy(torch.func.functional_call(ref, dict(zip(names, cur)), (x_t,)), y_t)
        grads = torch.autograd.grad(ce, cur, create_graph=True)
        cur = [c - lr_t * g for c, g in zip(cur, grads)]
    ref_loss = (sum(((c - g) ** 2).sum() for c, g in zip(cur, goal))
                / sum(((s - g) ** 2).sum() for s, g in zip(start, goal)))
    ref_gx, ref_glr = torch.autograd.grad(ref_loss, [x_t, lr_t])
    assert abs(float(ref_loss.detach()) - 1.0) > 1e-3  # the student moved
    close(loss, ref_loss.detach().numpy(), 2e-5, "loss")
    close(np.moveaxis(np.asarray(g_x), -1, 1), ref_gx.numpy(), what="d loss / d images")
    close(g_lr, ref_glr.numpy(), 2e-4, "d loss / d syn_lr")


@pytest.mark.parametrize("method,k", [("dc", 1), ("dc", 2), ("dm", 2), ("idc", 2)])
def test_the_pytorch_baseline_computes_the_jax_step(method, k):
    # benchmarks/torch_step.py is what every speed ratio divides by: given sm_jax's network weights, real images,
    # synthetic images and subset partitions, its step must give the same loss and the same updated images as
    # Method.matching_step. Every real image of a class (and of a subset) is drawn, so both sides' batches hold the
    # same images whatever order each draws them in; augmentation off on both sides. IDC: decoded images (factor 2),
    # mse, one image step per class (the other classes' momentum carried through it, as one PyTorch optimiser does).
    from benchmarks import torch_step
    from benchmarks.step import synthetic_cifar
    from sm_jax.augmentation import DSA_OPS
    from sm_jax.config import make_config
    from sm_jax.methods import make_context, make_method

    classes, ipc, per_class, lam = 3, 2, 8, 0.5
    data = synthetic_cifar(per_class, classes)
    cfg = make_config(method, ipc, "paper", subset_k=k, batch_real=per_class, subset_batch_real=per_class // k,
                      width=WIDTH, depth=DEPTH, class_chunk=0, aug_drop=",".join(DSA_OPS))
    m = make_method(cfg, data.spec)
    ctx = make_context(cfg, data)
    shape = (classes, ipc, 32, 32, 3)  # IDC stores [0, 1] pixels (both sides clip to them), the others normalised
    images = (jax.random.uniform if method == "idc" else jax.random.normal)(jax.random.key(6), shape)
    state = m.init_state(images)
    params, _ = m.net.init(jax.random.key(7))
    new, _, metrics = jax.jit(lambda im, os_: m.matching_step(im, os_, params, ctx, jax.random.key(8), lam))(
        state.images, state.opt_state)
    loss = metrics["loss_all"] + (lam * metrics["loss_subset"] if k > 1 else 0.0)

    step = torch_step.Step(method, ipc, per_class, cfg.lr_img, k, per_class // k, classes, per_class, width=WIDTH,
                           depth=DEPTH)
    step.policy = []
    copy_into(step.net, params)
    step.new_net = lambda: None  # DM's fresh network is the one just copied
    x = data.train_x.reshape(classes, per_class, 32, 32, 3)
    step.real = (torch.from_numpy(np.moveaxis(x, -1, 2).astype(np.float32)) / 255 - torch_step.MEAN) / torch_step.STD
    starts = np.array(ctx.class_idx)[:, :1]  # a class's rows are consecutive: partitions as indices in the class
    step.real_part = [[torch.from_numpy(r - s) for r in part] for part, s in zip(np.array(ctx.real_part), starts)]
    step.syn_part = [[torch.from_numpy(p) for p in part] for part in np.array(ctx.syn_part)]
    with torch.no_grad():
        step.images.copy_(nchw(images.reshape(-1, 32, 32, 3)))
    before = step.images.detach().clone()
    ref_loss = step(lam)
    close(loss, ref_loss, 2e-5, "loss")
    moved = np.moveaxis(np.asarray((new - images).reshape(-1, 32, 32, 3)), -1, 1)
    close(moved, (step.images.detach() - before).numpy(), what="the images' update")
    assert np.abs(moved).max() > 1e-5  # IDC's lr is 1e-3 at ipc 2


def official_translate(x, dx, dy):
    """DSA's rand_crop at one siamese translation: the image moved by (dx, dy) pixels over a zero border (the
    official code pads by 1 and clamps the sampling grid into the padded image, so farther pixels read the zero
    border)."""
    n, c, h, w = x.shape
    gx = (torch.arange(h).view(h, 1) + dx + 1).clamp(0, h + 1)
    gy = (torch.arange(w).view(1, w) + dy + 1).clamp(0, w + 1)
    return F.pad(x, [1, 1, 1, 1])[:, :, gx, gy]


def test_dsa_under_a_siamese_crop_equals_the_official_formula():
    # DSA's crop drawn by sm_jax for one (real, synthetic) pair: the one official translation that reproduces both
    # augmented batches exactly is found, and the official cosine matching on the batches it gives equals sm_jax's
    # loss and gradient (the gradient flows through the crop into the synthetic images)
    from sm_jax.augmentation import siamese

    net = make_net("convnet", CLASSES, (SIDE, SIDE, 3), WIDTH, DEPTH, "instancenorm")
    params, state = net.init(jax.random.key(1))
    real, syn, _ = batches(2)
    policy, key = (("crop",),), jax.random.key(9)
    aug_real, aug_syn = siamese(policy, key, real, syn)
    shift = SIDE // 8
    found = [(dx, dy) for dx in range(-shift, shift + 1) for dy in range(-shift, shift + 1)
             if np.array_equal(nchw(aug_real).numpy(), official_translate(nchw(real), dx, dy).numpy())
             and np.array_equal(nchw(aug_syn).numpy(), official_translate(nchw(syn), dx, dy).numpy())]
    assert len(found) == 1 and found[0] != (0, 0), found
    dx, dy = found[0]
    apply_fn = lambda p, x: net.apply(p, state, x)[0]  # noqa: E731
    loss, grad = jax.jit(jax.value_and_grad(lambda s: class_match(apply_fn, DISTANCES["cosine"], policy, params, real,
                                                                  s, jnp.int32(2), key)))(syn)
    ref = copy_into(TorchConvNet("instancenorm"), params)
    s_t = nchw(syn).requires_grad_(True)
    ref_loss = torch_match(ref, distance_wb, official_translate(nchw(real), dx, dy), official_translate(s_t, dx, dy), 2)
    (ref_grad,) = torch.autograd.grad(ref_loss, s_t)
    close(loss, ref_loss.detach().numpy(), 2e-5, "loss")
    close(np.moveaxis(np.asarray(grad), -1, 1), ref_grad.numpy(), what="d loss / d syn")
