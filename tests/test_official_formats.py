"""Every official set format, written as its code writes it, read by sm_jax into the tensors the official loader
feeds its network.

Each test saves a set with the official code's own save layout (docs/sets.md quotes the lines), then computes in
PyTorch what that code's evaluation hands its network before augmentation (its transforms written from their
definitions: IDC's multi-formation decoding and transforms.Normalize, ...), and checks that `load_set` gives the
same tensors, class by class, to float tolerance.
"""
import numpy as np
import pytest

from sm_jax.data import CIFAR_MEAN, CIFAR_STD
from sm_jax.sets import load_set
from sm_jax.sets.core import ImageSet, normalise
from sm_jax.sets.formats import FORMATS

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.torch

C, IPC, SIDE = 3, 2, 16


def official_normalize(x: "torch.Tensor", mean=CIFAR_MEAN, std=CIFAR_STD) -> "torch.Tensor":
    """transforms.Normalize on (N, C, H, W): (x - mean[c]) / std[c]."""
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def idc_decode_zoom(img: "torch.Tensor", factor: int) -> "torch.Tensor":
    """IDC test.py's decode_zoom for a side divisible by the factor: the factor x factor crops, row by row, each
    over all the class's images, concatenated, then nn.Upsample(size, mode='bilinear') (align_corners False)."""
    h = img.shape[-1]
    s = h // factor
    crops = [img[:, :, i * s:(i + 1) * s, j * s:(j + 1) * s] for i in range(factor) for j in range(factor)]
    return F.interpolate(torch.cat(crops), size=(h, h), mode="bilinear", align_corners=False)


def idc_fed(pixels: "torch.Tensor", factor: int) -> "torch.Tensor":
    """What IDC's test.py trains on from data.pt: per class (ipc consecutive rows) decoded, then normalised."""
    ipc = len(pixels) // C
    return torch.stack([official_normalize(idc_decode_zoom(pixels[c * ipc:(c + 1) * ipc], factor))
                        for c in range(C)])  # (C, factor^2 * ipc, 3, H, W)


def nhwc(x: "torch.Tensor") -> np.ndarray:
    return np.moveaxis(x.numpy(), -3, -1)


def stored_pixels(seed=0) -> "torch.Tensor":
    # IDC saves synset.data unclamped ("It is okay to clamp data to [0, 1] at here" is commented out)
    g = torch.Generator().manual_seed(seed)
    return torch.rand((C * IPC, 3, SIDE, SIDE), generator=g) * 1.2 - 0.1


def test_idc_data_pt_is_read_as_idc_feeds_it(tmp_path):
    # condense.py: torch.save([synset.data.detach().cpu(), synset.targets.cpu()], 'data.pt'), the stored images in
    # [0, 1] pixel space, targets class-major; test.py decodes them per class and normalises them in its transform
    x = stored_pixels()
    y = torch.arange(C).repeat_interleave(IPC)
    torch.save([x, y], tmp_path / "data.pt")
    got = load_set(tmp_path / "data.pt", dataset="cifar10", factor=2)
    np.testing.assert_allclose(got.images, nhwc(idc_fed(x, 2)), atol=1e-5)
    np.testing.assert_allclose(got.stored, normalise(nhwc(x).reshape(C, IPC, SIDE, SIDE, 3), CIFAR_MEAN, CIFAR_STD),
                               atol=1e-6)


def test_an_idc_export_is_what_idc_feeds_from_it(tmp_path):
    # sm_jax's IDC set written in IDC's layout (--format idc): IDC's own loader feeds its networks the images the
    # set trains on in sm_jax; read back, the set is the same
    from sm_jax.methods import idc_decode

    px = nhwc(stored_pixels(1).clamp(0, 1)).reshape(C, IPC, SIDE, SIDE, 3)
    s = ImageSet(normalise(np.asarray(idc_decode(px, 2)), CIFAR_MEAN, CIFAR_STD), ("a", "b", "c"), CIFAR_MEAN,
                 CIFAR_STD, {"dataset": "cifar10"}, normalise(px, CIFAR_MEAN, CIFAR_STD), "test", {})
    meta = {"dataset": "cifar10", "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}
    FORMATS["idc"](s, tmp_path, meta)
    x, y = torch.load(tmp_path / "data.pt", weights_only=True)
    assert x.shape == (C * IPC, 3, SIDE, SIDE) and x.dtype == torch.float32 and y.tolist() == [0, 0, 1, 1, 2, 2]
    assert meta["idc_factor"] == 2
    np.testing.assert_allclose(nhwc(idc_fed(x, 2)), s.images, atol=1e-5)
    import json

    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    back = load_set(tmp_path / "data.pt")
    np.testing.assert_allclose(back.images, s.images, atol=1e-5)


def test_dc_dsa_dm_results_pt_is_read_as_their_evaluation_feeds_it(tmp_path):
    # main.py / main_DM.py: data_save.append([copy.deepcopy(image_syn.detach().cpu()), copy.deepcopy(
    # label_syn.detach().cpu())]); torch.save({'data': data_save, 'accs_all_exps': accs_all_exps}, ...): the images
    # in the normalised space the networks take (image_syn is initialised from normalised real images and trained
    # there); evaluate_synset trains on them as they are (its augmentation aside)
    g = torch.Generator().manual_seed(2)
    x = torch.randn((C * IPC, 3, SIDE, SIDE), generator=g)
    y = torch.tensor(np.array([np.ones(IPC) * i for i in range(C)]), dtype=torch.long).view(-1)
    torch.save({"data": [[x.clone(), y.clone()]], "accs_all_exps": {"ConvNet": []}}, tmp_path / "res_DC.pt")
    got = load_set(tmp_path / "res_DC.pt", dataset="cifar10")
    np.testing.assert_array_equal(got.images, nhwc(x).reshape(C, IPC, SIDE, SIDE, 3))


def test_mtt_and_datm_tensors_are_read_as_their_evaluations_feed_them(tmp_path):
    # MTT distill.py: torch.save(image_save.cpu(), "images_{}.pt"), torch.save(label_syn.cpu(), "labels_{}.pt") (and
    # the _best pair); DATM's DATM.py also torch.save(syn_lr.detach().cpu(), "lr_{}.pt"), its labels learned logits
    # (N, classes). The images are in the networks' input space (ZCA with --zca, unclamped) and evaluate_synset /
    # evaluation.py train on them as they are; DATM's SoftCrossEntropy takes softmax of the stored logits
    from sm_jax.sets.core import SetError

    g = torch.Generator().manual_seed(3)
    x = torch.randn((C * IPC, 3, SIDE, SIDE), generator=g) * 3  # whitened images reach far beyond [0, 1]
    hard = torch.tensor(np.array([np.ones(IPC) * i for i in range(C)]), dtype=torch.long).view(-1)
    (tmp_path / "mtt").mkdir()
    torch.save(x.clone(), tmp_path / "mtt" / "images_best.pt")
    torch.save(hard.clone(), tmp_path / "mtt" / "labels_best.pt")
    torch.save(x.clone() * 0, tmp_path / "mtt" / "images_zca_best.pt")
    got = load_set(tmp_path / "mtt", dataset="cifar10")
    np.testing.assert_array_equal(got.images, nhwc(x).reshape(C, IPC, SIDE, SIDE, 3))
    assert got.soft_labels is None and got.learned == {}
    with pytest.raises(SetError, match="inverse-ZCA view"):
        load_set(tmp_path / "mtt" / "images_zca_best.pt", dataset="cifar10")

    logits = torch.randn((C * IPC, C), generator=g)
    (tmp_path / "datm").mkdir()
    torch.save(x.clone(), tmp_path / "datm" / "images_100.pt")
    torch.save(logits.clone(), tmp_path / "datm" / "labels_100.pt")
    torch.save(torch.tensor(0.0123), tmp_path / "datm" / "lr_100.pt")
    got = load_set(tmp_path / "datm" / "images_100.pt", dataset="cifar10")
    np.testing.assert_array_equal(got.images, nhwc(x).reshape(C, IPC, SIDE, SIDE, 3))
    np.testing.assert_array_equal(got.soft_labels, logits.numpy().reshape(C, IPC, C))
    assert got.learned["lr"] == pytest.approx(0.0123)


def test_a_ddranking_layout_is_read_as_the_package_feeds_it(tmp_path):
    # ddranking 0.2.0 compute_metrics(image_tensor, soft_labels, syn_lr): TensorDataset(image_tensor, labels) as
    # given, in the space of its test set (normalised, or ZCA with use_zca); soft labels are logits
    g = torch.Generator().manual_seed(4)
    x = torch.randn((C * IPC, 3, SIDE, SIDE), generator=g)
    logits = torch.randn((C * IPC, C), generator=g)
    torch.save(x, tmp_path / "images.pt")
    torch.save(logits, tmp_path / "labels.pt")
    torch.save(torch.tensor(0.02), tmp_path / "lr.pt")
    got = load_set(tmp_path, dataset="cifar10")
    np.testing.assert_array_equal(got.images, nhwc(x).reshape(C, IPC, SIDE, SIDE, 3))
    np.testing.assert_array_equal(got.soft_labels, logits.numpy().reshape(C, IPC, C))
    assert got.learned["lr"] == pytest.approx(0.02)


def test_dc_tinyimagenet_pt_is_normalised_as_dc_normalises_it(tmp_path):
    # DC utils.get_dataset('TinyImageNet'): data = torch.load('tinyimagenet.pt'); images_train.detach().float() /
    # 255.0, then per channel (x - mean[c]) / std[c] with ImageNet's statistics
    import jax.numpy as jnp

    from sm_jax.data import load_dataset
    from sm_jax.models import normalize

    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (400, 3, 64, 64), dtype=np.uint8)
    y = np.repeat(np.arange(200), 2)
    torch.save({"classes": [f"n{c:08d}" for c in range(200)], "images_train": torch.from_numpy(x),
                "labels_train": torch.from_numpy(y), "images_val": torch.from_numpy(x[:200]),
                "labels_val": torch.from_numpy(np.arange(200))}, tmp_path / "tinyimagenet.pt")
    d = load_dataset("tinyimagenet", tmp_path / "tinyimagenet.pt", cache_dir=tmp_path / "c")
    fed = official_normalize(torch.from_numpy(x).float() / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    ours = normalize(jnp.asarray(d.train_x, jnp.float32) / 255.0, d.mean, d.std)
    np.testing.assert_allclose(np.asarray(ours), nhwc(fed), atol=1e-5)
