"""The datasets of the official codes, by name: shape, classes, normalisation statistics, TFDS name, archives.

The statistics are the official DC/DSA code's (`utils.get_dataset`), which IDC's code repeats; CIFAR-100 uses
CIFAR-10's there, and so here. `folder` is any `{train,test}/{class}/*` image folder or archive: its shape,
classes and statistics come from the data.
"""
from __future__ import annotations

import dataclasses

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
DIGITS = tuple(str(d) for d in range(10))
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a run needs to know about a dataset before reading it.

    Attributes:
      name: registry name (the `--dataset` value).
      shape: (H, W, C) of every image; None: taken from the data (`folder`).
      num_classes: 0: taken from the data.
      mean, std: per-channel statistics of [0, 1] pixels the networks' inputs are normalised with; None: computed
        from the training split.
      tfds_name: the TFDS dataset loaded when no --data-dir is given (None: a --data-dir is required).
      archives: the official offline forms `--data-dir` accepts, besides an image folder (readers.KINDS keys).
      class_names: default names where the archive holds none.
      train_counts: images per class of the standard training split, and test_size the test split's (for planning
        a run's programs from shapes alone: `experiments.cifar10 --plan-for`); () / 0 where the data decides.
    """

    name: str
    shape: tuple[int, int, int] | None
    num_classes: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    tfds_name: str | None
    archives: tuple[str, ...]
    class_names: tuple[str, ...] = ()
    download: str = ""  # where a user with internet gets the official archive
    train_counts: tuple[int, ...] = ()
    test_size: int = 0


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10, (0.1307,), (0.3081,), "mnist", ("idx",), DIGITS,
                         "https://ossci-datasets.s3.amazonaws.com/mnist/ (the four *-ubyte.gz files)",
                         (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949), 10000),
    "fashion_mnist": DatasetInfo("fashion_mnist", (28, 28, 1), 10, (0.2861,), (0.3530,), "fashion_mnist", ("idx",),
                                 FASHION_CLASSES, "https://github.com/zalandoresearch/fashion-mnist (data/fashion)",
                                 (6000,) * 10, 10000),
    "svhn": DatasetInfo("svhn", (32, 32, 3), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                        "svhn_cropped", ("svhn-mat",), DIGITS,
                        "http://ufldl.stanford.edu/housenumbers/ (train_32x32.mat, test_32x32.mat)",
                        (4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659), 26032),
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10, CIFAR_MEAN, CIFAR_STD, "cifar10",
                           ("cifar10-python", "cifar10-binary"), CIFAR10_CLASSES,
                           "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", (5000,) * 10, 10000),
    "cifar100": DatasetInfo("cifar100", (32, 32, 3), 100, CIFAR_MEAN, CIFAR_STD, "cifar100",
                            ("cifar100-binary", "cifar100-python"), (),
                            "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", (500,) * 100, 10000),
    "folder": DatasetInfo("folder", None, 0, None, None, None, ()),
}
ALIASES = {"fashion": "fashion_mnist", "fashionmnist": "fashion_mnist", "svhn_cropped": "svhn"}


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of `name` (case-insensitive; a few official spellings accepted).

    Raises:
      ValueError: for an unknown name (the message lists the known ones).
    """
    key = name.lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[key]
