"""Config resolution: the K default, and refusals of values a run cannot use."""
import pytest

from sm_jax.config import ConfigError, make_config


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
