"""Config resolution: the K default, refusals of values a run cannot use, what a run is, the generated flags."""
import dataclasses
import json

import pytest

from sm_jax.config import make_config
from sm_jax.errors import ConfigError


@pytest.mark.parametrize("method,ipc,k", [("dc", 1, 1), ("dsa", 1, 1), ("dc", 3, 1), ("dc", 10, 2), ("dsa", 50, 2),
                                          ("idc", 1, 2), ("idc", 3, 2)])  # IDC matches ipc * 4 decoded images
def test_subset_k_default_is_2_where_it_divides_else_1(method, ipc, k):
    assert make_config(method, ipc).subset_k == k


def test_an_explicit_k_that_does_not_divide_stays_an_error():
    with pytest.raises(ConfigError, match="does not divide"):
        make_config("dc", 1, subset_k=2)
    assert make_config("dc", 1, subset_k=1).subset_k == 1


@pytest.mark.parametrize("field,value", [("lr_img", float("nan")), ("lr_img", float("inf")), ("lr_img", 0.0),
                                         ("stop_grace", -1.0), ("checkpoint_minutes", float("nan")),
                                         ("log_every", -0.5)])
def test_unusable_values_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')}"):
        make_config("dc", 10, **{field: value})


def test_lifecycle_and_device_settings_do_not_change_the_run_identity():
    a = make_config("dsa", 10, stop_grace=5.0, checkpoint_minutes=1.0, log_every=2.0, precision="tensorfloat32",
                    class_chunk=3)
    assert a.identity() == make_config("dsa", 10).identity()


def test_cifar10_entry_point_is_condense_with_dataset_cifar10():
    from sm_jax.cli.condense import condense_parser, config_from_flags

    flags = ["--method", "dsa", "--ipc", "10", "--preset", "cpu", "--data-dir", "x.tar.gz"]
    alias = config_from_flags(condense_parser("cifar10").parse_args(flags))
    assert alias == config_from_flags(condense_parser().parse_args(["--dataset", "cifar10", *flags]))
    assert alias.dataset == "cifar10" and alias.workdir == "runs/dsa_ipc10_k2_s0"
    mnist = config_from_flags(condense_parser().parse_args(["--dataset", "MNIST", *flags]))
    assert mnist.dataset == "mnist" and mnist.workdir == "runs/mnist_dsa_ipc10_k2_s0"


def test_dataset_presets_follow_the_official_codes():
    from sm_jax.config import make_config

    c10, mnist = make_config("idc", 10, dataset="cifar10"), make_config("idc", 10, dataset="mnist")
    assert (c10.identity()["distance"], c10.lr_img, c10.inner_loop, c10.cutmix_prob) == ("mse", 5e-3, 32, 0.5)
    assert (mnist.distance, mnist.lr_img, mnist.inner_loop) == ("l1", 1e-4, 8)  # n_data 500: 8 steps of 64
    assert (mnist.aug_drop, mnist.cutmix_prob) == ("flip,cutout", 0.0)
    fashion = make_config("idc", 50, dataset="fashion_mnist")
    assert fashion.lr_img == pytest.approx(1e-4 * 5 * (28 / 32) ** 2) and fashion.aug_drop == ""
    assert make_config("idc", 10, dataset="svhn").aug_drop == "flip"
    dc_mnist, dc_c10 = make_config("dc", 10, dataset="mnist"), make_config("dc", 10)
    assert (dc_mnist.eval_aug, dc_mnist.eval_epochs) == ("dc_crop_scale_rotate", 1000)  # utils.get_daparam
    assert (dc_c10.eval_aug, dc_c10.eval_epochs) == ("", 300)
    for ds in ("mnist", "svhn", "cifar100"):  # DC/DSA: the same loops on every dataset (utils.get_loops)
        assert make_config("dsa", 10, dataset=ds).outer_loop == 10
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        make_config("dc", 10, dataset="imagenet")


def test_checkpoints_of_older_versions_keep_their_identity():
    from sm_jax.config import run_differences

    for method in ("dc", "idc"):  # fields added since: dataset, distance, aug_drop, cutmix_prob, model
        new = make_config(method, 10)
        old = {k: v for k, v in dataclasses.asdict(new).items()
               if k not in ("dataset", "distance", "aug_drop", "cutmix_prob", "model")}
        assert run_differences(old, new) == ""
        assert run_differences({**old, "seed": 1}, new) == "seed: 1 (recorded) vs 0 (now)"


def test_same_run_means_same_identity_and_for_results_the_same_evaluation():
    from sm_jax.config import IDENTITY, RESULT, Config, run_differences

    cfg = make_config("dc", 10)
    kinds = {f.name: f.metadata["kind"] for f in dataclasses.fields(Config)}
    assert kinds["lr_img"] == kinds["seed"] == kinds["holdout"] == IDENTITY
    assert kinds["eval_epochs"] == kinds["eval_arch"] == RESULT
    recorded = cfg.replace(eval_epochs=7, workdir="elsewhere", devices=4).__dict__
    assert run_differences(recorded, cfg) == ""  # the same set: resumable
    assert run_differences(recorded, cfg, results=True) == "eval_epochs: 7 (recorded) vs 300 (now)"
    assert run_differences({**recorded, "distance": "cosine"}, cfg) == ""  # '' is the method's own


def test_the_command_line_is_generated_from_the_config_fields():
    from sm_jax.cli.condense import condense_parser
    from sm_jax.config import Config
    from sm_jax.methods import METHODS

    p = condense_parser()
    flags = {a.dest for a in p._actions}
    # every field is a flag, but the preset's own record of where its settings came from
    assert {f.name for f in dataclasses.fields(Config)} - flags == {"preset_note"}
    text = p.format_help()
    assert f"(one of {', '.join(METHODS)})" in text  # choices read from the registry
    args = p.parse_args(["--dataset", "cifar10", "--method", "dc", "--ipc", "1", "--class-chunk", "auto",
                         "--subset-only"])
    assert (args.class_chunk, args.subset_only, args.lr_img) == (-1, True, None)  # None: the preset's value


@pytest.mark.parametrize("method,ipc,dataset,note", [
    ("dc", 10, "cifar10", ""), ("dsa", 50, "mnist", ""), ("idc", 10, "svhn", ""), ("mtt", 50, "cifar100", ""),
    ("dc", 5, "cifar10", "no loops for ipc 5 (it stops there): ipc 10's taken"),
    ("dsa", 100, "cifar10", "no loops for ipc 100"),
    ("idc", 10, "folder", "IDC has no settings for folder: CIFAR-10's taken"),
    ("idc", 10, "cifar100", "no CIFAR-100 settings: CIFAR-10's distance and lr_img taken"),
    ("mtt", 20, "cifar10", "no row for cifar10 ipc 20: cifar10 ipc 10's taken (syn_steps 30"),
    ("mtt", 10, "svhn", "no row for svhn ipc 10: cifar10 ipc 10's taken"),
])
def test_a_preset_taken_from_another_cell_says_so(method, ipc, dataset, note):
    cfg = make_config(method, ipc, "cpu", dataset=dataset)
    assert (note in cfg.preset_note) and (cfg.preset_note == "") == (note == "")
    assert json.loads(cfg.to_json())["preset_note"] == cfg.preset_note
