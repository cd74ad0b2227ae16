"""The command-line layer: parse, validate, call the core, render. Nothing else."""
