"""sm_jax: dataset condensation by gradient matching (DC, DSA, IDC) with subset matching, in JAX."""
__version__ = "0.1.0"
