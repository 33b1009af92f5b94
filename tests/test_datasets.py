"""The dataset registry: every entry from a tiny archive in each official form, TFDS (mocked), one-line errors."""
import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest
from conftest import write_image_folder_archive

from sm_jax.data import DATASETS, DataError, Dataset, load_dataset

N_TRAIN, N_TEST = 20, 10  # labels i % classes: every class has training images


def _add(tf, name, blob):
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tf.addfile(info, io.BytesIO(blob))


def _idx(a: np.ndarray) -> bytes:
    """The idx format by hand: 0, 0, type 0x08 (ubyte), ndim, big-endian dims, then the bytes."""
    head = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return gzip.compress(head + a.astype(np.uint8).tobytes())


def _splits(rng, shape, classes, n=N_TRAIN):
    n = max(n, classes)
    return {"train_x": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
            "train_y": (np.arange(n) % classes).astype(np.int32),
            "test_x": rng.integers(0, 256, (N_TEST, *shape), dtype=np.uint8),
            "test_y": (np.arange(N_TEST) % classes).astype(np.int32)}


def write_idx(path, s):
    names = {"train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
             "test_x": "t10k-images-idx3-ubyte.gz", "test_y": "t10k-labels-idx1-ubyte.gz"}
    with tarfile.open(path, "w:gz") as tf:
        for k, n in names.items():
            _add(tf, f"raw/{n}", _idx(s[k][..., 0] if k.endswith("_x") else s[k]))


def write_svhn(path, s):
    import scipy.io

    with tarfile.open(path, "w") as tf:
        for split in ("train", "test"):
            buf = io.BytesIO()
            y = np.where(s[f"{split}_y"] == 0, 10, s[f"{split}_y"])[:, None]  # SVHN stores digit 0 as 10
            scipy.io.savemat(buf, {"X": s[f"{split}_x"].transpose(1, 2, 3, 0), "y": y})
            _add(tf, f"{split}_32x32.mat", buf.getvalue())


def _rows(x):
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1)


def write_cifar100_binary(path, s):
    with tarfile.open(path, "w:gz") as tf:
        for split in ("train", "test"):
            y = s[f"{split}_y"].astype(np.uint8)[:, None]
            _add(tf, f"cifar-100-binary/{split}.bin", np.concatenate([y // 5, y, _rows(s[f"{split}_x"])], 1).tobytes())
        _add(tf, "cifar-100-binary/fine_label_names.txt", "\n".join(f"c{i}" for i in range(100)).encode() + b"\n")


def write_cifar100_python(path, s):
    with tarfile.open(path, "w:gz") as tf:
        for split in ("train", "test"):
            blob = pickle.dumps({b"data": _rows(s[f"{split}_x"]), b"fine_labels": s[f"{split}_y"].tolist(),
                                 b"coarse_labels": (s[f"{split}_y"] // 5).tolist()}, protocol=2)
            _add(tf, f"cifar-100-python/{split}", blob)
        _add(tf, "cifar-100-python/meta", pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}))


FORMS = {  # (dataset, writer, image shape, classes)
    "mnist-idx": ("mnist", write_idx, (28, 28, 1), 10),
    "fashion-idx": ("fashion_mnist", write_idx, (28, 28, 1), 10),
    "svhn-mat": ("svhn", write_svhn, (32, 32, 3), 10),
    "cifar100-binary": ("cifar100", write_cifar100_binary, (32, 32, 3), 100),
    "cifar100-python": ("cifar100", write_cifar100_python, (32, 32, 3), 100),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_official_archives_load_with_the_registry_shape_and_statistics(form, tmp_path):
    name, write, shape, classes = FORMS[form]
    s = _splits(np.random.default_rng(0), shape, classes)
    write(tmp_path / "archive.tar.gz", s)
    d = load_dataset(name, tmp_path / "archive.tar.gz", cache_dir=tmp_path / "c")
    for k in s:
        np.testing.assert_array_equal(getattr(d, k), s[k])
    assert d.num_classes == classes and d.spec.image_shape == shape and d.name == name
    assert d.mean == DATASETS[name].mean and d.std == DATASETS[name].std
    if name == "cifar100":
        assert d.class_names[:2] == ("c0", "c1")
    again = load_dataset(name, tmp_path / "archive.tar.gz", cache_dir=tmp_path / "c")  # from the cache
    np.testing.assert_array_equal(again.train_x, d.train_x)
    assert again.class_names == d.class_names and again.mean == d.mean


def test_every_registry_entry_has_a_tested_offline_form():
    from sm_jax.data.registry import MTT_SUBSETS

    imagenet = {"tinyimagenet", "imagenet10", "imagenet100", *MTT_SUBSETS}  # test_imagenet.py
    tested = {v[0] for v in FORMS.values()} | {"cifar10", "folder"} | imagenet  # cifar10: test_data.py
    assert tested == set(DATASETS)


def test_grey_image_folder_and_any_folder_with_its_own_statistics(tmp_path):
    rng = np.random.default_rng(1)
    s = _splits(rng, (28, 28, 1), 10)
    grey = Dataset(s["train_x"][..., 0], s["train_y"], s["test_x"][..., 0], s["test_y"], tuple("0123456789"), "t")
    write_image_folder_archive(tmp_path / "mnist.tar.gz", grey)  # mode-L PNGs
    d = load_dataset("mnist", tmp_path / "mnist.tar.gz", cache_dir=tmp_path / "c")
    by_class = np.argsort(s["train_y"], kind="stable")  # the folder reader goes class by class, files by name
    np.testing.assert_array_equal(d.train_x, s["train_x"][by_class])
    np.testing.assert_array_equal(d.train_y, s["train_y"][by_class])
    assert d.spec.image_shape == (28, 28, 1) and d.mean == (0.1307,)
    f = load_dataset("folder", tmp_path / "mnist.tar.gz", cache_dir=tmp_path / "c")
    assert f.spec.image_shape == (28, 28, 1)  # grey PNGs stay one channel
    x = s["train_x"].astype(np.float64) / 255
    np.testing.assert_allclose(f.mean, [x.mean()], atol=1e-4)
    np.testing.assert_allclose(f.std, [x.std()], atol=1e-4)


@pytest.mark.slow  # imports TensorFlow
def test_tfds_path_under_mock_data(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    import sm_jax.data as data_mod

    monkeypatch.setattr(data_mod, "_online", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=200):
        d = load_dataset("mnist")
    assert d.train_x.shape == (200, 28, 28, 1) and d.train_x.dtype == np.uint8
    assert d.source.startswith("tfds:") and d.num_classes == 10 and d.mean == (0.1307,)


def test_one_line_errors(tmp_path):
    s = _splits(np.random.default_rng(2), (28, 28, 1), 10)
    write_idx(tmp_path / "ok.tar.gz", s)
    with pytest.raises(DataError, match="cifar100's forms"):  # an MNIST archive given as CIFAR-100
        load_dataset("cifar100", tmp_path / "ok.tar.gz", cache_dir=tmp_path / "c")
    bad = dict(s, train_y=s["train_y"].copy())
    bad["train_y"][3] = 12
    write_idx(tmp_path / "mislabelled.tar.gz", bad)
    with pytest.raises(DataError, match="label 12 is outside 0..9"):
        load_dataset("mnist", tmp_path / "mislabelled.tar.gz", cache_dir=tmp_path / "c")
    with tarfile.open(tmp_path / "cut.tar", "w") as tf:  # a truncated gzip member inside a sound archive
        _add(tf, "train-images-idx3-ubyte.gz", _idx(s["train_x"][..., 0])[:200])
        for n in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            _add(tf, n, _idx(s["train_y"]))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: corrupt gzip"):
        load_dataset("mnist", tmp_path / "cut.tar", cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", tmp_path / "ok.tar.gz")
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset("folder")


def test_pickled_archives_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tf:
        for n in ("train", "test", "meta"):
            _add(tf, f"cifar-100-python/{n}", pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_dataset("cifar100", tmp_path / "evil.tar.gz", cache_dir=tmp_path / "c")


# --- end to end: image size, channels and classes flow through condensation and evaluation ---------------

TINY_RUN = dict(width=8, depth=1, batch_real=2, subset_batch_real=1, outer_loop=2, inner_loop=1, iterations=1,
                eval_epochs=1, eval_models=1, checkpoint_every=1)


@pytest.mark.slow
def test_mnist_idx_archive_condenses_and_evaluates_through_the_cli(tmp_path, monkeypatch, capsys):
    """28x28x1 through IDC (factor-2 decoding at 28, the l1 distance, no flip/cutout/CutMix) from the command line's
    main, in this process (the process itself: test_experiment.py)."""
    import json

    from sm_jax.cli.condense import condense_main

    s = _splits(np.random.default_rng(3), (28, 28, 1), 10, n=40)  # IDC's init takes 4 images per class
    write_idx(tmp_path / "mnist.tar.gz", s)
    monkeypatch.setenv("SM_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SM_JAX_OFFLINE", "1")
    wd = tmp_path / "run"
    condense_main(["--dataset", "mnist", "--method", "idc", "--ipc", "1", "--preset", "cpu", "--width", "8",
                   "--depth", "1", "--batch-real", "2", "--outer-loop", "2", "--inner-loop", "1", "--iterations", "2",
                   "--eval-epochs", "1", "--eval-models", "1", "--subset-k", "2", "--data-dir",
                   str(tmp_path / "mnist.tar.gz"), "--workdir", str(wd), "--no-progress"])
    cfg = json.loads((wd / "config.json").read_text())
    assert (cfg["dataset"], cfg["distance"], cfg["aug_drop"], cfg["cutmix_prob"]) == ("mnist", "l1", "flip,cutout", 0)
    assert cfg["lr_img"] == pytest.approx(1e-5)  # IDC's MNIST lr_img 1e-4 at ipc 10, scaled by ipc / 10
    syn = np.load(wd / "synthetic.npz")
    assert syn["images"].shape == (10, 28, 28, 1) and syn["decoded_images"].shape == (40, 28, 28, 1)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= out["accuracy_mean"] <= 1
    from PIL import Image

    assert Image.open(wd / "synthetic.png").size[1] == 10 * (2 * 28 + 2)  # a row per class, 2x scale


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dsa", "dc"])
def test_grey_28px_and_100_class_runs_condense_and_evaluate(method, tmp_path):
    """DSA's augmentation on 28x28x1 images; DC on 100 classes (the class axis in 100 one-class programs)."""
    from sm_jax.config import make_config
    from sm_jax.experiment import Run

    shape, classes = ((28, 28, 1), 3) if method == "dsa" else ((32, 32, 3), 100)
    rng = np.random.default_rng(4)
    n = 2 * classes
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    y = (np.arange(n) % classes).astype(np.int32)
    data = Dataset(x, y, x[:classes], y[:classes], tuple(f"c{i}" for i in range(classes)), "generated",
                   mean=(0.5,) * shape[-1], std=(0.25,) * shape[-1], name="folder")
    cfg = make_config(method, 2, "cpu", "folder", workdir=str(tmp_path / "w"), **TINY_RUN,
                      subset_k=2 if method == "dsa" else 1)  # K = 1 at 100 classes: the class axis is what is tested
    results = Run(cfg, data=data, progress=False, log=lambda *a: None).execute()
    assert len(results["accuracies"]) == 1 and 0 <= results["accuracy_mean"] <= 1
    syn = np.load(tmp_path / "w" / "synthetic.npz")
    assert syn["images"].shape == (2 * classes, *shape)
