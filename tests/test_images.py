from __future__ import annotations

from pathlib import Path

import pytest

from starft_cli.errors import ImageError
from starft_cli.images import expand_image_args, open_image
from tests.imagegen import IMAGE_KINDS, SUFFIX, make_image, make_mode_image


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


# One definition of "an image as RGB uint8" (item 5 of issue 9): every kind of file gives the expected pixels
# through PIL (classify, eval, data check) and the same pixels through the training decoder (torchvision where it
# matches PIL, PIL otherwise).
@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_every_image_kind_reads_the_same_through_pil_and_the_training_decoder(tmp_path: Path, kind: str) -> None:
    import numpy as np
    import torch
    from torchvision.transforms.v2.functional import pil_to_tensor

    from starft_cli.data.pipeline import decode_file
    from starft_cli.eval.features import open_for_eval

    path, expected = make_mode_image(tmp_path / f"x{SUFFIX[kind.split('-')[0]]}", kind)
    pil = open_image(path)
    assert pil.mode == "RGB"
    assert np.array_equal(np.asarray(pil), expected)
    tensor = decode_file(path)
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, *expected.shape[:2])
    assert torch.equal(tensor, pil_to_tensor(pil))
    assert np.array_equal(np.asarray(open_for_eval(path, None)), expected)  # eval's full decode


@pytest.mark.parametrize(
    ("kind", "fast"),
    [("jpeg-RGB", True), ("jpeg-L", True), ("png-RGB", True), ("png-L", True)]
    + [(k, False) for k in ("jpeg-CMYK", "png-I;16", "png-RGB16", "png-RGBA", "png-P-transparency", "gif-animated")],
)
def test_torchvision_decodes_only_the_files_where_it_equals_pil(tmp_path: Path, kind: str, fast: bool) -> None:
    from starft_cli.data.pipeline import torchvision_decodable

    path, _ = make_mode_image(tmp_path / f"x{SUFFIX[kind.split('-')[0]]}", kind)
    assert torchvision_decodable(path.read_bytes()) is fast


def test_sixteen_bit_png_is_scaled_not_white(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    values = np.full((6, 8), 0x8000 + 0x40, dtype=np.uint16)  # mid-grey in 16 bits
    Image.fromarray(values).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    pixels = np.asarray(open_image(tmp_path / "grey16.png"))
    assert pixels.shape == (6, 8, 3) and (pixels == 128).all()  # 0x8040 >> 8; PIL's own convert gives 255


def test_training_batches_mix_8_bit_16_bit_and_animated_files(tmp_path: Path) -> None:
    """16-bit PNGs and animated GIFs among JPEGs: the batch stacks and stays in the normalised range."""
    import torch

    from starft_cli.data.pipeline import TrainSamples, train_transform
    from starft_cli.data.registry import load_dataset

    for c, kinds in enumerate((("jpeg-RGB", "png-I;16"), ("gif-animated", "png-RGB16"))):
        for i, kind in enumerate(kinds):
            make_mode_image(tmp_path / f"class{c}" / f"{i}{SUFFIX[kind.split('-')[0]]}", kind)
    ds = load_dataset(f"folder:{tmp_path}")
    samples = TrainSamples(ds, train_transform({"size": [16, 16]}), seed=0)
    (batch, labels, _), *_ = torch.utils.data.DataLoader(samples, batch_size=4)
    assert batch.shape == (4, 3, 16, 16) and batch.dtype == torch.float32 and labels.tolist() == [0, 0, 1, 1]
    assert batch.min() > -2.5 and batch.max() < 2.5  # CLIP-normalised 8-bit values, not raw 16-bit ones


def test_read_image_reports_the_conversions(tmp_path: Path) -> None:
    from starft_cli.images import read_image

    notes = {}
    for kind in ("jpeg-RGB", "png-I;16", "gif-animated", "png-RGBA", "jpeg-CMYK", "tiff-F"):
        path, _ = make_mode_image(tmp_path / f"{len(notes)}{SUFFIX[kind.split('-')[0]]}", kind)
        notes[kind] = read_image(path)[1]
    assert notes == {
        "jpeg-RGB": [],
        "png-I;16": ["16-bit"],
        "gif-animated": ["animated"],
        "png-RGBA": ["alpha"],
        "jpeg-CMYK": ["cmyk"],
        "tiff-F": ["float"],
    }
