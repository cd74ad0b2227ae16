"""The paper recipes (``configs/paper/*.toml`` of the repository), installed here by the wheel; see
:mod:`starft_cli.train.recipes`."""
