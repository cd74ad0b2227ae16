from __future__ import annotations

from pathlib import Path

import pytest

from starft_cli.errors import ImageError
from starft_cli.images import expand_image_args, open_image
from tests.imagegen import make_image


def test_expand_files_dirs_globs_once_each(tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.jpg", 0)
    b = make_image(tmp_path / "sub" / "b.png", 1)
    (tmp_path / "sub" / "notes.txt").write_text("not an image")
    found = expand_image_args([str(a), str(tmp_path / "sub"), str(tmp_path / "*.jpg")])
    assert found == [a, b]


def test_glob_without_matches(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="matches no images"):
        expand_image_args([str(tmp_path / "*.png")])


def test_open_image_converts_to_rgb(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "gray.png"
    Image.new("L", (10, 12), 7).save(path)
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (10, 12)
