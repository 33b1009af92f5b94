"""Augmentation as pure functions of a PRNG key: DSA's differentiable ops, DC's evaluation ops, the policies
that combine them, and CutMix. Images are NHWC in normalised space."""
from sm_jax.augmentation.cutmix import cutmix
from sm_jax.augmentation.dc_eval import DC_OPS
from sm_jax.augmentation.dsa import DSA_OPS, affine_resample
from sm_jax.augmentation.policy import (
                                        DSA_POLICY,
                                        NO_POLICY,
                                        OPS,
                                        Policy,
                                        apply_policy,
                                        augment,
                                        check_policy,
                                        drop_ops,
                                        sample_policy,
                                        siamese,
                                        siamese_side,
)

__all__ = ["DC_OPS", "DSA_OPS", "DSA_POLICY", "NO_POLICY", "OPS", "Policy", "affine_resample", "apply_policy",
           "augment", "check_policy", "cutmix", "drop_ops", "sample_policy", "siamese",
           "siamese_side"]
