"""Condensed sets that travel: export a run's set with what is needed to reuse it (formats `folder`, `npz`, `pt`,
each with `metadata.json`), and load any set, ours or the official codes', for evaluation.

`load_set(path)` reads an exported folder / npz / pt, a run's `synthetic.npz`, the official DC/DSA/DM `res_*.pt`
or IDC's `data.pt`; every reader returns an `ImageSet`. `sm_jax.sets.export.export_run` writes a finished run's
set (it reads runs, so the package's top does not import it: the run itself writes with the formats' schema).
"""
from __future__ import annotations

from sm_jax.sets.core import ImageSet, SetError, metadata_of, protocol_dict
from sm_jax.sets.formats import FORMATS
from sm_jax.sets.readers import load_set

__all__ = ["FORMATS", "ImageSet", "SetError", "load_set", "metadata_of", "protocol_dict"]
