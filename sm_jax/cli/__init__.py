"""The command line (experiments/*.py are thin wrappers around these; the library never imports this package):
common (flags generated from the config's fields, exit codes), condense (condense, experts, launch), sets
(evaluate, rank, export), study."""
