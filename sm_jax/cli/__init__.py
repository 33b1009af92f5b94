"""The command line (experiments/*.py are thin wrappers around these; the library never imports this package):
common (flags generated from the config's fields, exit codes), parser (one-line flag errors), condense (condense,
experts), launch (N local processes; no JAX), sets (evaluate, rank, export), study."""
