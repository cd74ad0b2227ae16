"""The shipped zoo manifest's package.

In a source checkout this folder only marks the package for setuptools; in a built wheel
(``pyproject.toml``: ``[tool.setuptools.package-dir]``) the package's folder is the repository's ``zoo/``,
so the wheel holds ``starft_cli/zoo/_shipped/manifest.toml``. ``starft_cli.zoo.manifest.shipped_manifest_path``
finds whichever exists.
"""
