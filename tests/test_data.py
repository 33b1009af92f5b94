import io
import pickle
import tarfile

import numpy as np
import pytest
from conftest import SHARED_DATA

from sm_jax import data as data_mod
from sm_jax.data import DataError, load_dataset


def test_image_folder_archive_roundtrip_and_cache(tiny_data, tiny_archive, tmp_path):
    d = load_dataset("cifar10", tiny_archive, cache_dir=tmp_path)
    assert d.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(d.train_x, tiny_data.train_x)  # PNG is lossless
    np.testing.assert_array_equal(d.train_y, tiny_data.train_y)
    np.testing.assert_array_equal(d.test_x, tiny_data.test_x)
    assert len(list(tmp_path.glob("cifar10-*/done"))) == 1
    d2 = load_dataset("cifar10", tiny_archive, cache_dir=tmp_path)  # served from the cache
    np.testing.assert_array_equal(d2.train_x, d.train_x)
    idx = d.class_indices()
    assert idx.shape == (3, 16) and (d.train_y[idx[1]] == 1).all()


def test_extracted_folder(tiny_archive, tmp_path):
    with tarfile.open(tiny_archive) as tf:
        tf.extractall(tmp_path / "x", filter="data")
    d = load_dataset("cifar10", tmp_path / "x", cache_dir=tmp_path / "cache")
    assert d.train_x.shape == (48, 32, 32, 3)


def _official_archive(path, kind, rng):
    xs = [rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8) for _ in range(6)]
    ys = [(np.arange(4) + 4 * i) % 10 for i in range(6)]  # every class has training images
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    with tarfile.open(path, "w:gz") as tf:
        for name, x, y in zip(names, xs, ys):
            if kind == "python":
                blob = pickle.dumps({b"data": x.reshape(4, -1), b"labels": y.tolist()})
                member = f"cifar-10-batches-py/{name}"
            else:
                blob = np.concatenate([y[:, None].astype(np.uint8), x.reshape(4, -1)], 1).tobytes()
                member = f"cifar-10-batches-bin/{name}.bin"
            info = tarfile.TarInfo(member)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return xs, ys


@pytest.mark.parametrize("kind", ["python", "binary"])
def test_official_archives(kind, tmp_path):
    xs, ys = _official_archive(tmp_path / f"{kind}.tar.gz", kind, np.random.default_rng(0))
    d = load_dataset("cifar10", tmp_path / f"{kind}.tar.gz", cache_dir=tmp_path / "c")
    assert d.train_x.shape == (20, 32, 32, 3) and d.test_x.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(d.train_x[4:8], xs[1].transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(d.test_y, ys[5])
    assert d.class_names[0] == "airplane"


def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nope.tar.gz")
    bad = tmp_path / "corrupt.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    with pytest.raises(DataError, match="corrupt.tar.gz"):
        load_dataset("cifar10", bad, cache_dir=tmp_path)
    wrong = tmp_path / "wrong.tar.gz"
    with tarfile.open(wrong, "w:gz") as tf:
        info = tarfile.TarInfo("readme.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DataError, match="wrong.tar.gz: this archive holds no"):
        load_dataset("cifar10", wrong, cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: this directory holds no"):
        load_dataset("cifar10", tmp_path / "empty")
    monkeypatch.setattr(data_mod, "_online", lambda *a, **k: False)
    with pytest.raises(DataError, match="pass --data-dir"):
        load_dataset("cifar10", None)


def test_truncated_archive_names_the_file(tiny_archive, tmp_path):
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(tiny_archive.read_bytes()[: tiny_archive.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.tar.gz"):
        load_dataset("cifar10", cut, cache_dir=tmp_path / "c")


@pytest.mark.slow  # decodes all 60000 images
def test_shared_cifar10_copy(cifar_cache):
    d = load_dataset("cifar10", SHARED_DATA, cache_dir=cifar_cache)
    assert d.train_x.shape == (50000, 32, 32, 3) and d.test_x.shape == (10000, 32, 32, 3)
    assert np.bincount(d.train_y).tolist() == [5000] * 10 and np.bincount(d.test_y).tolist() == [1000] * 10
    assert d.class_names[0] == "airplane" and d.class_names[9] == "truck"


def test_holdout_split_is_disjoint_fixed_and_per_class(tiny_data):
    from sm_jax.data import DataError

    d = tiny_data.holdout(4)
    assert d.test_x.shape[0] == 4 * tiny_data.num_classes
    assert np.bincount(d.test_y).tolist() == [4] * tiny_data.num_classes
    assert np.bincount(d.train_y).tolist() == [12] * tiny_data.num_classes
    # held-out and kept images partition the original training set
    rows = lambda x: {r.tobytes() for r in x.reshape(len(x), -1)}  # noqa: E731
    assert rows(d.test_x).isdisjoint(rows(d.train_x))
    assert rows(d.test_x) | rows(d.train_x) == rows(tiny_data.train_x)
    again = tiny_data.holdout(4)
    assert np.array_equal(again.test_x, d.test_x)  # independent of anything but (per_class, seed)
    with pytest.raises(DataError, match="holdout 16"):
        tiny_data.holdout(16)
