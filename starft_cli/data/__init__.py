"""Datasets: one registry for training and evaluation (see :mod:`starft_cli.data.registry`)."""
