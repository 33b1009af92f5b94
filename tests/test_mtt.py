"""Trajectory matching (MTT) and its preparation: the normalised distance by hand, the checkpointed unroll's
gradient against the plain one, TESLA against the exact gradient, ZCA against numpy, experts that resume bit for bit
after SIGTERM and refuse another identity's directory."""
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import dsa_only

from sm_jax import experts
from sm_jax.augmentation import DSA_OPS
from sm_jax.config import make_config
from sm_jax.data.zca import fit_zca
from sm_jax.lifecycle import Stopped, StopSignals
from sm_jax.methods import MTT, make_method


def tiny_cfg(**kw):
    # DSA's flips only, in the students' steps and the experts' epochs
    base = dict(width=8, depth=1, syn_steps=3, num_experts=2, expert_train_epochs=3, expert_batch=8,
                max_start_epoch=2, expert_epochs=1, subset_k=1, zca=False, eval_epochs=2, eval_models=1,
                aug_drop=dsa_only("flip"))
    return make_config("mtt", 2, "cpu", **{**base, **kw})


class TwoParameters:
    """logits = (w0 * s, w1 * s) with s the image's mean: a model whose SGD step is computed by hand."""

    name, has_state = "two", False

    def init(self, key):
        return {"w": jnp.zeros((2,))}, {}

    def apply(self, params, state, x, train=False):
        s = x.reshape(x.shape[0], -1).mean(1)
        return jnp.stack([params["w"][0] * s, params["w"][1] * s], 1), state


def test_normalised_distance_after_one_step_by_hand(tiny_data):
    m = make_method(tiny_cfg(syn_steps=1), tiny_data.spec)
    m.net, m.match_policy = TwoParameters(), ()
    m._unravel = lambda t: {"w": t}
    x, y = jnp.ones((1, 2, 2, 3)), jnp.zeros((1,), jnp.int32)
    # theta_0 = (0, 0): softmax (1/2, 1/2), grad of CE for class 0 = (p0 - 1, p1) = (-1/2, 1/2); lr 0.1 gives
    # theta_1 = (0.05, -0.05); target (1, 0): (0.95^2 + 0.05^2) / 1 = 0.905
    loss = m.student_loss(x, y, 0.1, jnp.zeros(2), jnp.array([1.0, 0.0]), jax.random.key(0), 1)
    assert float(loss) == pytest.approx(0.905, rel=1e-6)


def _unroll_case(tiny_data, **kw):
    m = make_method(tiny_cfg(**kw), tiny_data.spec)
    assert m.match_policy == (("flip",),)
    x = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
    y = jnp.repeat(jnp.arange(3), 2)
    theta0 = jax.flatten_util.ravel_pytree(m.net.init(jax.random.key(2))[0])[0]
    target = theta0 + 0.01 * jax.random.normal(jax.random.key(3), theta0.shape)
    return m, x, y, theta0, target


def test_checkpointed_unroll_gives_the_plain_unrolls_gradient(tiny_data):
    grads = []
    for remat in (True, False):
        m, x, y, t0, tt = _unroll_case(tiny_data, remat=remat)
        f = jax.jit(jax.value_and_grad(lambda x, lr: m.student_loss(x, y, lr, t0, tt, jax.random.key(4), 3), (0, 1)))
        grads.append(f(x, jnp.float32(0.01)))
    (l1, (gx1, glr1)), (l2, (gx2, glr2)) = grads
    assert float(jnp.abs(gx1).max()) > 0 and float(glr1) != 0
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    np.testing.assert_allclose(gx1, gx2, rtol=1e-4, atol=1e-6 * float(jnp.abs(gx2).max()))
    np.testing.assert_allclose(glr1, glr2, rtol=1e-4)


def test_tesla_is_exact_for_one_step_and_an_approximation_beyond(tiny_data):
    def both(steps):
        m, x, y, t0, tt = _unroll_case(tiny_data, syn_steps=steps)
        lr, key = jnp.float32(0.01), jax.random.key(4)
        exact = jax.jit(jax.value_and_grad(lambda x, lr: m.student_loss(x, y, lr, t0, tt, key, 3), (0, 1)))(x, lr)
        tesla = jax.jit(lambda x, lr: m.tesla_grads(x, y, lr, t0, tt, key, 3))(x, lr)
        return exact, tesla

    (le, (gx, glr)), (lt, (tx, tlr)) = both(1)  # one step: only the direct term exists
    np.testing.assert_allclose(lt, le, rtol=1e-6)
    np.testing.assert_allclose(tx, gx, rtol=1e-4, atol=1e-6 * float(jnp.abs(gx).max()))
    np.testing.assert_allclose(tlr, glr, rtol=1e-4)
    (le, (gx, _)), (lt, (tx, _)) = both(4)
    np.testing.assert_allclose(lt, le, rtol=1e-6)  # the same forward pass
    cos = float(jnp.vdot(gx, tx) / (jnp.linalg.norm(gx) * jnp.linalg.norm(tx)))
    assert 0.5 < cos < 1 - 1e-6  # aligned, not equal: later steps' dependence on the images is dropped


def test_zca_against_a_direct_numpy_computation():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (300, 4, 4, 3), dtype=np.uint8)
    z = fit_zca(x)
    flat = x.reshape(300, -1) / 255.0
    cov = np.cov(flat, rowvar=False)  # unbiased (N - 1)
    s, u = np.linalg.eigh(cov)
    t = u @ np.diag(1 / np.sqrt(s + 0.1)) @ u.T
    np.testing.assert_allclose(z.mean, flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(z.transform, t, rtol=1e-4, atol=1e-5)
    white = np.asarray(z.apply(jnp.asarray(flat.reshape(x.shape), jnp.float32)))
    np.testing.assert_allclose(white.reshape(300, -1), (flat - flat.mean(0)) @ t, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(z.invert(jnp.asarray(white))), flat.reshape(x.shape), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(z.normalizer()(jnp.asarray(flat.reshape(x.shape), jnp.float32))), white)


def test_the_experts_program_takes_the_whitening_as_an_input_not_a_constant():
    """The ZCA transform (D, D) reaches the experts' epoch program as an argument: closed over, it would be a constant
    of the program (37.7 MB at 32x32x3) in every compilation and cache entry."""
    from jax.flatten_util import ravel_pytree

    from sm_jax.data.zca import Zca
    from sm_jax.models import make_net

    rng = np.random.default_rng(0)
    d = 4 * 4 * 3
    z = Zca(rng.random(d, np.float32), rng.random((d, d), np.float32), rng.random((d, d), np.float32))
    net = make_net("convnet", 3, (4, 4, 3), width=4, depth=1)
    flat, unravel = ravel_pytree(net.init(jax.random.key(0))[0])
    program = experts._epoch_program(net, unravel, 6, 3, 0.01)
    args = (flat[None], jnp.arange(6, dtype=jnp.int32)[None], jax.random.key(0)[None],
            jnp.zeros((6, 4, 4, 3), jnp.uint8), jnp.zeros((6,), jnp.int32))
    square = f"f32[{d},{d}]"

    def constants(text):
        return [ln for ln in text.splitlines() if square in ln and " constant(" in ln]

    as_input = jax.jit(program).lower(z.normalizer(), *args).as_text(dialect="hlo")
    assert square in as_input and not constants(as_input)
    closed = jax.jit(lambda *a: program(jax.tree_util.Partial(z.apply), *a)).lower(*args).as_text(dialect="hlo")
    assert constants(closed)  # the form the argument replaces (what this test tells apart)


def test_experts_resume_bit_for_bit_after_sigterm_and_refuse_another_identity(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_cfg(subset_k=2)
    m = make_method(cfg, tiny_data.spec)
    ident = experts.identity(cfg, tiny_data)
    quiet = dict(log=lambda *a: None, progress=False)
    straight = experts.ExpertStore(tmp_path / "straight", ident)
    straight.train(cfg, tiny_data, m.net, m.normalize, **quiet)
    assert straight.complete and len(straight.accuracies()) == 2 + 2 * 2  # whole-data experts, then per subset

    write = experts.ExpertStore._write

    def write_then_signal(self, epoch, flat):  # SIGTERM arrives once epoch 1 is on disk
        write(self, epoch, flat)
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = experts.ExpertStore(tmp_path / "stopped", ident)
    monkeypatch.setattr(experts.ExpertStore, "_write", write_then_signal)
    with pytest.raises(Stopped, match="trained to epoch 1"), StopSignals() as stop:
        stopped.train(cfg, tiny_data, m.net, m.normalize, stop=stop, **quiet)
    monkeypatch.setattr(experts.ExpertStore, "_write", write)
    assert stopped.epochs_done() == 1
    stopped.train(cfg, tiny_data, m.net, m.normalize, **quiet)  # resumes at epoch 2
    for e in range(cfg.expert_train_epochs + 1):
        np.testing.assert_array_equal(np.load(stopped.dir / f"epoch_{e:03d}.npy"),
                                      np.load(straight.dir / f"epoch_{e:03d}.npy"))
    other = experts.ExpertStore(straight.dir, {**ident, "lr_teacher": 0.02})
    with pytest.raises(experts.ExpertError, match=r"holds other experts \(lr_teacher: 0.01 there vs 0.02 now\)"):
        other.check()
    assert json.loads((straight.dir / "identity.json").read_text()) == ident


def test_presets_follow_the_table_and_bad_settings_are_one_line_errors():
    from sm_jax.errors import ConfigError

    p = make_config("mtt", 10)
    assert (p.syn_steps, p.expert_epochs, p.max_start_epoch, p.zca, p.lr_lr, p.lr_teacher, p.eval_models) == \
        (30, 2, 20, True, 1e-5, 0.01, 5)
    assert make_config("mtt", 50, dataset="cifar100").batch_syn == 125 and not make_config("mtt", 50).zca
    assert MTT.eval_policy and make_config("mtt", 1, "cpu").iterations < p.iterations
    with pytest.raises(ConfigError, match="exceeds the experts' --expert-train-epochs 3"):
        make_config("mtt", 1, "cpu", expert_train_epochs=3, max_start_epoch=3)
    with pytest.raises(ConfigError, match="--zca does not apply to dc"):
        make_config("dc", 10, zca=True)
    with pytest.raises(ConfigError, match="--tesla is implemented for the whole-set term only"):
        make_config("mtt", 10, tesla=True, subset_k=2)


@pytest.mark.slow  # three runs, an export and an evaluation through the command line
def test_an_mtt_run_through_the_cli_resumes_bit_for_bit_exports_its_lr_and_evaluates_with_it(
        tiny_archive, tmp_path, capsys, monkeypatch):
    from sm_jax import artifacts
    from sm_jax.cli.condense import condense_main
    from sm_jax.cli.sets import evaluate_main, export_main

    monkeypatch.setenv("SM_JAX_OFFLINE", "1")
    monkeypatch.setenv("SM_JAX_CACHE", str(tmp_path / "cache"))
    flags = ["--method", "mtt", "--ipc", "2", "--preset", "cpu", "--width", "8", "--depth", "1", "--syn-steps", "2",
             "--num-experts", "2", "--expert-train-epochs", "2", "--max-start-epoch", "1", "--expert-epochs", "1",
             "--expert-batch", "8", "--expert-per-class", "0", "--subset-k", "2", "--iterations", "3",
             "--checkpoint-every", "1", "--eval-epochs", "1", "--eval-models", "1", "--no-progress", "--zca",
             "--aug-drop", dsa_only("flip"),
             "--data-dir", str(tiny_archive), "--experts-dir", str(tmp_path / "experts")]

    def run(main, argv, **kw):
        try:
            main([str(a) for a in argv], **kw)
            code = 0
        except SystemExit as e:
            code = e.code
        return (code, *capsys.readouterr())

    code, out, err = run(condense_main, [*flags, "--workdir", tmp_path / "straight"], dataset="cifar10")
    assert code == 0, err[-3000:]
    assert "experts: test accuracy" in out
    write = artifacts.MetricsLog.write

    def write_then_signal(self, record):  # SIGTERM once iteration 2 is logged
        write(self, record)
        if record.get("iteration") == 2 and "loss_all" in record:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(artifacts.MetricsLog, "write", write_then_signal)
    code, out, err = run(condense_main, [*flags, "--workdir", tmp_path / "resumed"], dataset="cifar10")
    assert code == 143 and "experts: reusing" in out and "saved a checkpoint at iteration 2" in out + err, err[-2000:]
    monkeypatch.setattr(artifacts.MetricsLog, "write", write)
    code, out, err = run(condense_main, [*flags, "--workdir", tmp_path / "resumed"], dataset="cifar10")
    assert code == 0 and "resumed" in out, err[-2000:]
    a, b = (np.load(tmp_path / w / "synthetic.npz") for w in ("straight", "resumed"))
    np.testing.assert_array_equal(a["train_normalized"], b["train_normalized"])
    res = json.loads((tmp_path / "straight" / "results.json").read_text())
    lr = res["learned"]["lr"]
    assert lr != 0.01 and res["eval_lr"] == lr and float(a["learned_lr"]) == lr == float(b["learned_lr"])
    assert json.loads((tmp_path / "resumed" / "results.json").read_text())["accuracies"] == res["accuracies"]

    code, _, err = run(condense_main, [*flags, "--workdir", tmp_path / "other", "--lr-teacher", "0.02"],
                       dataset="cifar10")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "holds other experts (lr_teacher: 0.01 there vs 0.02 now)" in lines[0]

    code, _, err = run(export_main, ["--workdir", tmp_path / "straight", "--to", tmp_path / "set", "--format", "npz"])
    assert code == 0, err[-2000:]
    meta = json.loads((tmp_path / "set" / "metadata.json").read_text())
    assert meta["learned"] == {"lr": lr} and meta["evaluation_protocol"]["lr"] == lr and meta["zca"]["eps"] == 0.1
    assert np.load(tmp_path / "set" / "zca.npz")["zca_transform"].shape == (32 * 32 * 3, 32 * 32 * 3)
    code, out, err = run(evaluate_main, ["--set", tmp_path / "set", "--no-progress"])
    assert code == 0, err[-2000:]
    ev = json.loads(out.strip().splitlines()[-1])
    # the set's own protocol: its learned lr, its ZCA on the test split, the run's network keys: the same accuracy
    assert ev["eval_lr"] == lr and ev["accuracies"] == res["accuracies"]


@pytest.mark.torch
def test_official_replay_buffers_read_into_the_same_network(tiny_data, tmp_path):
    """A buffer in the official layout, written by PyTorch from the official ConvNet's definition (conv, GroupNorm
    with one group per channel, ReLU, 2x2 average pooling; a linear classifier on the NCHW flattening): read back,
    its parameters give this ConvNet the same logits as the PyTorch network."""
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    official = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(8, 8, affine=True), nn.ReLU(),
                             nn.AvgPool2d(2, 2), nn.Flatten(), nn.Linear(8 * 16 * 16, 3))
    snapshots = []
    for _ in range(3):  # three epochs' snapshots of one expert, each a list of its parameters in order
        with torch.no_grad():
            for p in official.parameters():
                p.add_(0.1 * torch.randn_like(p))
        snapshots.append([p.detach().clone() for p in official.parameters()])
    torch.save([snapshots, snapshots], tmp_path / "replay_buffer_0.pt")
    m = make_method(tiny_cfg(), tiny_data.spec)
    traj = experts.read_official(tmp_path, m.net)
    assert traj.shape == (2, 3, m.num_params)
    x = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = official(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = m.net.apply(m._unravel(jnp.asarray(traj[1, 2])), {}, jnp.asarray(x))[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # and back (params_to_official): the parameters in the official order are the PyTorch network's, exactly
    back = experts.params_to_official(m._unravel(jnp.asarray(traj[1, 2])))
    assert len(back) == len(snapshots[2])
    for a, t in zip(back, snapshots[2]):
        np.testing.assert_array_equal(a, t.numpy())
    with pytest.raises(experts.ExpertError, match="another shape"):
        experts.read_official(tmp_path, make_method(tiny_cfg(width=16), tiny_data.spec).net)
    # buffer.py on a CPU-only host: `p.detach().cpu()` is the live parameter, so every snapshot is the last one
    live = [p.detach() for p in official.parameters()]
    (tmp_path / "cpu").mkdir()
    torch.save([[live, live, live]], tmp_path / "cpu" / "replay_buffer_0.pt")
    with pytest.raises(experts.ExpertError, match="first and last snapshots are identical"):
        experts.read_official(tmp_path / "cpu", m.net)


def test_each_subset_student_learns_from_its_synthetic_subset_only(tiny_data):
    # student k is unrolled on the k-th synthetic subset of every class: its loss's gradient is zero on every image
    # outside that subset and not on those inside it
    cfg = tiny_cfg(subset_k=2, subset_lambda=1.0, aug_drop=",".join(DSA_OPS))  # no augmentation
    m = make_method(cfg, tiny_data.spec)
    c, ipc = 3, 4
    images = jax.random.normal(jax.random.key(1), (c, ipc, 32, 32, 3))
    syn_part = jnp.asarray([[[2, 0], [1, 3]], [[1, 2], [3, 0]], [[0, 3], [2, 1]]], jnp.int32)  # (C, K, ipc / K)
    theta = jax.flatten_util.ravel_pytree(m.net.init(jax.random.key(2))[0])[0]
    starts = jnp.stack([theta, theta + 0.01])
    targets = starts + 0.01 * jax.random.normal(jax.random.key(3), starts.shape)
    jac = jax.jacrev(lambda x: m.subset_losses(x, 0.01, syn_part, starts, targets, jax.random.key(4), c * ipc))(
        images)  # (K, C, ipc, H, W, C')
    moved = np.abs(np.asarray(jac)).reshape(2, c, ipc, -1).max(-1) > 0  # (K, C, ipc)
    for k in range(2):
        want = np.zeros((c, ipc), bool)
        want[np.arange(c)[:, None], np.asarray(syn_part[:, k])] = True
        np.testing.assert_array_equal(moved[k], want)


def test_each_subset_expert_learns_from_its_real_subset_only(tiny_data, tmp_path):
    # change every training image outside real subset 0: the subset-0 experts' trajectories stay the same to the
    # bit, the whole-data and subset-1 experts' do not; the subsets partition every class
    cfg = tiny_cfg(subset_k=2, subset_lambda=1.0, num_experts=1, expert_train_epochs=1, max_start_epoch=1)
    m = make_method(cfg, tiny_data.spec)
    rows = experts.training_rows(cfg, tiny_data)  # whole, subset 0, subset 1
    assert len(rows) == 3 and not set(rows[1]) & set(rows[2])
    assert sorted([*rows[1], *rows[2]]) == sorted(rows[0])
    for r in rows[1:]:
        assert np.bincount(tiny_data.train_y[r]).tolist() == [8, 8, 8]
    other = np.setdiff1d(np.arange(len(tiny_data.train_y)), rows[1])
    x = tiny_data.train_x.copy()
    x[other] = 255 - x[other]
    changed = tiny_data.__class__(x, tiny_data.train_y, tiny_data.test_x, tiny_data.test_y, tiny_data.class_names,
                                  "tiny, changed outside subset 0")
    quiet = dict(log=lambda *a: None, progress=False)
    ident = experts.identity(cfg, tiny_data)
    got = []
    for name, data in (("a", tiny_data), ("b", changed)):
        store = experts.ExpertStore(tmp_path / name, ident)
        store.train(cfg, data, m.net, m.normalize, **quiet)
        got.append(store.load(1, 1)[:, 0])  # (experts, P) after the epoch
    np.testing.assert_array_equal(got[0][1], got[1][1])
    assert not np.allclose(got[0][0], got[1][0]) and not np.allclose(got[0][2], got[1][2])
