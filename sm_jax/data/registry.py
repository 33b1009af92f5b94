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
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # TinyImageNet's and the subsets'

# MTT's ImageNet subsets (`utils.Config`: indices into the sorted ILSVRC-2012 wnids), as wnids in label order
MTT_SUBSETS = {
    "imagenette": ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
                   "n03425413", "n03445777", "n03888257"),
    "imagewoof": ("n02096294", "n02093754", "n02111889", "n02088364", "n02086240", "n02089973", "n02087394",
                  "n02115641", "n02099601", "n02105641"),
    "imagemeow": ("n02123045", "n02123159", "n02123394", "n02123597", "n02124075", "n02129165", "n02129604",
                  "n02128925", "n02128757", "n02127052"),
    "imagesquawk": ("n01806143", "n02007558", "n01818515", "n02051845", "n02056570", "n01614925", "n01843383",
                    "n01518878", "n01860187", "n01819313"),
    "imagefruit": ("n07753275", "n07753592", "n07745940", "n07747607", "n07749582", "n07768694", "n07753113",
                   "n07720875", "n07718472", "n07742313"),
    "imageyellow": ("n02206856", "n12057211", "n07753592", "n07749582", "n12144580", "n04146614", "n03530642",
                    "n02129165", "n01773157", "n01531178"),
}

# IDC's ImageNet-100 (`misc/class100.txt`, label order = file order; ImageNet-10 = its first 10 lines)
IDC_CLASSES = (
    "n02869837", "n01749939", "n02488291", "n02107142", "n13037406", "n02091831", "n04517823", "n04589890",
    "n03062245", "n01773797", "n01735189", "n07831146", "n07753275", "n03085013", "n04485082", "n02105505",
    "n01983481", "n02788148", "n03530642", "n04435653", "n02086910", "n02859443", "n13040303", "n03594734",
    "n02085620", "n02099849", "n01558993", "n04493381", "n02109047", "n04111531", "n02877765", "n04429376",
    "n02009229", "n01978455", "n02106550", "n01820546", "n01692333", "n07714571", "n02974003", "n02114855",
    "n03785016", "n03764736", "n03775546", "n02087046", "n07836838", "n04099969", "n04592741", "n03891251",
    "n02701002", "n03379051", "n02259212", "n07715103", "n03947888", "n04026417", "n02326432", "n03637318",
    "n01980166", "n02113799", "n02086240", "n03903868", "n02483362", "n04127249", "n02089973", "n03017168",
    "n02093428", "n02804414", "n02396427", "n04418357", "n02172182", "n01729322", "n02113978", "n03787032",
    "n02089867", "n02119022", "n03777754", "n04238763", "n02231487", "n03032252", "n02138441", "n02104029",
    "n03837869", "n03494278", "n04136333", "n03794056", "n03492542", "n02018207", "n04067472", "n03930630",
    "n03584829", "n02123045", "n04229816", "n02100583", "n03642806", "n04336792", "n03259280", "n02116738",
    "n02108089", "n03424325", "n01855672", "n02090622",
)


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
      classes: the wnids an ImageNet subset reads from an ILSVRC folder, in label order (() = the source's own).
      resize: how a source's images reach `shape` when the cache is built (imagenet.decode): '' none (they must
        have it), 'squash' or 'crop'; `--res` then chooses another size.
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
    classes: tuple[str, ...] = ()
    resize: str = ""


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
    "tinyimagenet": DatasetInfo("tinyimagenet", (64, 64, 3), 200, IMAGENET_MEAN, IMAGENET_STD, None,
                                ("tinyimagenet", "tinyimagenet-pt"), (),
                                "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                                (500,) * 200, 10000),
    # MTT: ImageNet train/val, `Resize(im_size)` with im_size (128, 128): every image squashed to 128x128.
    # ~1300 training images per class (ILSVRC's count varies by class), 50 validation images each.
    **{name: DatasetInfo(name, (128, 128, 3), 10, IMAGENET_MEAN, IMAGENET_STD, None, ("imagenet-folder",), (),
                         "https://image-net.org/download (ILSVRC-2012 train and val)", (1300,) * 10, 500, wnids,
                         "squash")
       for name, wnids in MTT_SUBSETS.items()},
    # IDC: ImageNet train/val, `Resize(224)` + `CenterCrop(224)` once (`load_resized_data`)
    **{name: DatasetInfo(name, (224, 224, 3), n, IMAGENET_MEAN, IMAGENET_STD, None, ("imagenet-folder",), (),
                         "https://image-net.org/download (ILSVRC-2012 train and val)", (1300,) * n, 50 * n,
                         IDC_CLASSES[:n], "crop")
       for name, n in (("imagenet10", 10), ("imagenet100", 100))},
    "folder": DatasetInfo("folder", None, 0, None, None, None, ()),
}
ALIASES = {"fashion": "fashion_mnist", "fashionmnist": "fashion_mnist", "svhn_cropped": "svhn", "tiny": "tinyimagenet",
           "tiny_imagenet": "tinyimagenet"}


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
