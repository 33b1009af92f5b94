"""Sets that travel (sm_jax.sets): the export formats read back, the official layouts, the random baseline's draw.
No network is trained here; tests/test_cli.py evaluates exported sets end to end."""
import dataclasses
import json

import numpy as np
import pytest

from sm_jax.config import make_config
from sm_jax.data import CIFAR10_CLASSES, DataSpec
from sm_jax.evaluation import random_subset
from sm_jax.methods import make_method
from sm_jax.sets import FORMATS, ImageSet, SetError, load_set
from sm_jax.sets.core import by_class
from sm_jax.sets.formats import _class_dirs, npz_arrays

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def a_set(classes=3, n=2, names=None, seed=0) -> ImageSet:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(classes, n, 8, 8, 3)).astype(np.float32) * 1.5  # some pixels fall outside [0, 1]
    return ImageSet(x, tuple(names or [f"c{i}" for i in range(classes)]), MEAN, STD, {"dataset": "cifar10"})


def write(s: ImageSet, fmt: str, out, meta=None):
    meta = {"mean": list(s.mean), "std": list(s.std), "class_names": list(s.class_names), "dataset": "cifar10",
            **(meta or {})}
    FORMATS[fmt](s, out, meta)
    (out / "metadata.json").write_text(json.dumps(meta))
    return meta


@pytest.mark.torch
def test_npz_and_pt_read_back_exactly_and_png_within_8bit_rounding(tmp_path):
    pytest.importorskip("torch")
    s = a_set(names=["dog", "cat", "ant"])  # not in sorted order: the folders are prefixed with the label
    for fmt in FORMATS:
        write(s, fmt, tmp_path / fmt)
    npz, pt = load_set(tmp_path / "npz"), load_set(tmp_path / "pt")
    np.testing.assert_array_equal(npz.images, s.images)
    np.testing.assert_array_equal(pt.images, s.images)
    assert npz.class_names == pt.class_names == s.class_names
    folder = load_set(tmp_path / "folder")
    assert sorted(p.name for p in (tmp_path / "folder").iterdir() if p.is_dir()) == ["0_dog", "1_cat", "2_ant"]
    assert folder.class_names == s.class_names  # from metadata.json, in label order
    err = np.abs(folder.pixels() - s.pixels())
    assert err.max() <= 0.5 / 255 + 1e-6 and err.max() > 0  # 8-bit rounding of the clipped pixels, no more
    # ImageFolder's labelling: the sorted class folders, read with PIL alone
    from PIL import Image

    first = sorted((tmp_path / "folder" / "1_cat").iterdir())[0]
    np.testing.assert_array_equal(np.asarray(Image.open(first)), np.round(s.pixels()[1, 0] * 255).astype(np.uint8))


def test_idc_folder_export_keeps_the_stored_images_beside(tmp_path):
    s = a_set()
    stored = a_set(n=1).images
    s = ImageSet(s.images, s.class_names, MEAN, STD, {}, stored)
    meta = write(s, "folder", tmp_path / "out")
    assert meta["stored_folder"] == "out_stored"
    assert load_set(tmp_path / "out").images.shape == (3, 2, 8, 8, 3)  # what networks train on
    assert sorted(p.name for p in (tmp_path / "out_stored").iterdir()) == ["c0", "c1", "c2"]
    assert len(list((tmp_path / "out_stored" / "c0").iterdir())) == 1


def test_npz_schema_is_a_runs_synthetic_npz(tmp_path):
    """The export's npz and a run's synthetic.npz share one schema: the stored pixels in [0, 1] and the exact
    normalised images networks train on."""
    from sm_jax.artifacts import save_synthetic

    cfg = make_config("idc", 1, "cpu", factor=2, subset_k=1)
    method = make_method(cfg, DataSpec(3, (8, 8, 3)))
    stored = np.random.default_rng(0).uniform(size=(3, 1, 8, 8, 3)).astype(np.float32)
    save_synthetic(tmp_path, method, stored, ["a", "b", "c"])
    syn = np.load(tmp_path / "synthetic.npz")
    s = load_set(tmp_path / "synthetic.npz")
    np.testing.assert_array_equal(s.images, np.asarray(method.decode(stored)))  # (3, 4, 8, 8, 3): decoded
    assert s.stored.shape == (3, 1, 8, 8, 3) and s.class_names == ("a", "b", "c")
    again = npz_arrays(s)
    assert set(again) == set(syn.files)
    np.testing.assert_allclose(again["images"], syn["images"], atol=1e-6)
    np.testing.assert_array_equal(again["train_normalized"], syn["train_normalized"])


@pytest.mark.torch
def test_official_layouts(tmp_path):
    """DC/DSA/DM's res_*.pt ({'data': [[images, labels], ...]}), read with torch.load(weights_only=True): several
    experiments, classes in any order; without metadata the dataset gives the normalisation."""
    torch = pytest.importorskip("torch")
    s = a_set(classes=10, n=2)
    x = torch.from_numpy(np.ascontiguousarray(s.images.reshape(20, 8, 8, 3).transpose(0, 3, 1, 2)))
    y = torch.arange(10).repeat_interleave(2)
    perm = torch.from_numpy(np.argsort(-y.numpy(), kind="stable"))  # classes need not come in label order
    torch.save({"data": [[x[perm] * 0, y[perm]], [x[perm], y[perm]]], "accs_all_exps": {"ConvNet": [np.float64(0.5)]}},
               tmp_path / "res_DM_CIFAR10_ConvNet_2ipc.pt")
    with pytest.raises(SetError, match="give --dataset"):
        load_set(tmp_path / "res_DM_CIFAR10_ConvNet_2ipc.pt")
    got = load_set(tmp_path / "res_DM_CIFAR10_ConvNet_2ipc.pt", dataset="CIFAR10", index=1)
    np.testing.assert_array_equal(got.images, s.images)
    assert got.class_names == CIFAR10_CLASSES and got.mean == MEAN
    with pytest.raises(SetError, match="holds 2 sets"):
        load_set(tmp_path / "res_DM_CIFAR10_ConvNet_2ipc.pt", dataset="cifar10", index=2)
    # IDC's data.pt (pixels, decoded and normalised as IDC's test.py does): test_official_formats.py


@pytest.mark.parametrize("name,content,pattern", [
    ("bad.pt", b"not a pickle", "not a readable PyTorch set"),
    ("bad.npz", b"PK\x03\x04 torn", "not a readable npz"),
    ("set.txt", b"x", "not a set"),
])
@pytest.mark.torch
def test_corrupt_files_are_one_line_errors(tmp_path, name, content, pattern):
    if name.endswith(".pt"):
        pytest.importorskip("torch")
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SetError, match=pattern):
        load_set(tmp_path / name, dataset="cifar10")


@pytest.mark.torch
def test_unsafe_pickles_are_refused(tmp_path):
    torch = pytest.importorskip("torch")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"data": [[Evil(), Evil()]]}, tmp_path / "evil.pt")
    with pytest.raises(SetError, match="not a readable PyTorch set"):
        load_set(tmp_path / "evil.pt", dataset="cifar10")


def test_mislabelled_sets_are_refused(tmp_path):
    with pytest.raises(SetError, match="the same number of images"):
        by_class(np.zeros((3, 2)), np.array([0, 0, 1]), "x")
    with pytest.raises(SetError, match="labels must lie in 0..1"):
        by_class(np.zeros((3, 2)), np.array([0, 1, 5]), "x", num_classes=2)
    np.savez(tmp_path / "s.npz", images=np.zeros((3, 4, 4, 3), np.float32), labels=np.array([0, 1, 1]))
    with pytest.raises(SetError, match="the same number of images"):
        load_set(tmp_path / "s.npz", dataset="cifar10")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SetError, match="no class folders"):
        load_set(tmp_path / "empty", dataset="cifar10")
    with pytest.raises(SetError, match="does not exist"):
        load_set(tmp_path / "nowhere")


def test_class_folders_sort_in_label_order():
    assert _class_dirs(["airplane", "bird"]) == ["airplane", "bird"]
    assert _class_dirs([str(i) for i in range(12)])[10:] == ["10_10", "11_11"]  # '10' < '2' as text
    assert sorted(_class_dirs(["b/x", "a"])) == _class_dirs(["b/x", "a"])


def test_random_baseline_draw():
    """The same subset for the same seed, another for another seed, always distinct training images of the class."""
    train_y = np.repeat(np.arange(4), 30)[np.random.default_rng(0).permutation(120)]
    a, b, c = (random_subset(train_y, 4, 5, seed) for seed in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for idx in (a, c):
        assert idx.shape == (4, 5) and all(len(set(row)) == 5 for row in idx)
        assert all((train_y[row] == k).all() for k, row in enumerate(idx))
        assert idx.min() >= 0 and idx.max() < len(train_y)
    with pytest.raises(ValueError, match="needs 31 training images"):
        random_subset(train_y, 4, 31, 0)


@pytest.mark.torch
def test_soft_labels_and_learned_lr_round_trip(tmp_path):
    """A set with soft labels and a learned lr keeps both through npz and DD-Ranking's layout; its `learned` protocol
    trains on them (set_targets), the `hard` one on the class labels."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    soft = rng.normal(size=(3, 2, 3)).astype(np.float32)
    s = dataclasses.replace(a_set(), soft_labels=soft, learned={"lr": 0.0123})
    for fmt in ("npz", "ddranking"):
        write(s, fmt, tmp_path / fmt)
        back = load_set(tmp_path / fmt)
        np.testing.assert_array_equal(back.images, s.images)
        np.testing.assert_array_equal(back.soft_labels, soft)
        assert back.learned["lr"] == pytest.approx(0.0123)
    # DD-Ranking's own reading of the layout: (N, C, H, W) class-major images, (N, C) logits, a 0-d lr
    x, y = torch.load(tmp_path / "ddranking" / "images.pt"), torch.load(tmp_path / "ddranking" / "labels.pt")
    assert tuple(x.shape) == (6, 3, 8, 8) and tuple(y.shape) == (6, 3)
    np.testing.assert_array_equal(x[3].numpy(), s.images[1, 1].transpose(2, 0, 1))  # image 3 = class 3 // ipc = 1
    np.testing.assert_array_equal(y[3].numpy(), soft[1, 1])
    # without soft labels the layout holds the class labels, and reads back without them
    write(a_set(), "ddranking", tmp_path / "hard")
    assert torch.load(tmp_path / "hard" / "labels.pt").tolist() == [0, 0, 1, 1, 2, 2]
    assert load_set(tmp_path / "hard").soft_labels is None and not (tmp_path / "hard" / "lr.pt").exists()
    from sm_jax.evaluation import set_targets

    m = make_method(make_config("dc", 2, "cpu"), DataSpec(3, (8, 8, 3)))
    np.testing.assert_array_equal(set_targets(m, back.images, "learned", back.soft_labels), soft.reshape(6, 3))
    assert set_targets(m, back.images, "hard", back.soft_labels).tolist() == [0, 0, 1, 1, 2, 2]
