"""Public download locations of the benchmarks that have no Hub copy here, fetched with the one verified-download
helper (:mod:`starft_cli.download`) and extracted atomically into ``--data-root``.

Where each location and number comes from:

- Waterbirds: github.com/kohpangwei/group_DRO's README links
  nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz (no checksum published; none recorded here,
  since this machine cannot reach it: the download is verified by the size the server announces, and its sha256 is
  printed so that it can be pinned).
- CIFAR-10.2: the two .npz files of github.com/modestyachts/cifar-10.2 (no checksum published; as above).
- WILDS iWildCam v2.0 / FMoW v1.1: the CodaLab bundles of the ``wilds`` package (``_versions_dict`` of
  ``wilds/datasets/iwildcam_dataset.py`` and ``fmow_dataset.py``: download_url and compressed_size); the iWildCam
  archive's sha256 is the one a public mirror measured (huggingface.co/datasets/emmilly/iwildcam-wilds-v2).
- PACS (Google Drive only) and ImageNet's training set (login at image-net.org) have no stable public location:
  ``starft data download`` prints where to get them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from starft_cli.errors import DataError


@dataclass(frozen=True)
class PublicFile:
    url: str
    name: str  # the file name it is saved under
    size: int | None = None
    sha256: str | None = None
    extract: bool = True  # an archive extracted into the dataset's folder (else copied into it as it is)
    inner: str | None = None  # the folder inside the archive that becomes the dataset's folder


@dataclass(frozen=True)
class PublicSource:
    dataset: str
    folder: str  # the dataset's folder under --data-root (its registration's)
    files: tuple[PublicFile, ...]


PUBLIC_SOURCES: dict[str, PublicSource] = {
    source.dataset: source
    for source in (
        PublicSource(
            "waterbirds",
            "waterbird_complete95_forest2water2",
            (
                PublicFile(
                    "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz",
                    "waterbird_complete95_forest2water2.tar.gz",
                ),
            ),
        ),
        PublicSource(
            "cifar10.2",
            "cifar-10.2",
            tuple(
                PublicFile(f"https://github.com/modestyachts/cifar-10.2/raw/master/{name}", name, extract=False)
                for name in ("cifar102_train.npz", "cifar102_test.npz")
            ),
        ),
        PublicSource(
            "iwildcam",
            "iwildcam_v2.0",
            (
                PublicFile(
                    "https://worksheets.codalab.org/rest/bundles/0x6313da2b204647e79a14b468131fcd64/contents/blob/",
                    "iwildcam_v2.0.tar.gz",
                    size=11_957_415_473,
                    sha256="05c872f46eee44315f79bc90f4098c69ae3799a2b95116db02292ea1b4e370d2",
                ),
            ),
        ),
        PublicSource(
            "fmow",
            "fmow_v1.1",
            (
                PublicFile(
                    "https://worksheets.codalab.org/rest/bundles/0xaec91eb7c9d548ebb15e1b5e60f966ab/contents/blob/",
                    "fmow_v1.1.tar.gz",
                    size=53_893_324_800,
                ),
            ),
        ),
    )
}

NEEDS_LOGIN = {
    "imagenet": "ImageNet's training set needs an account: register at https://image-net.org, download "
    "ILSVRC2012_img_train.tar and lay it out as imagenet/train/<wnid>/*.JPEG (val: `starft data download imagenet "
    "--split val` fetches the Hub copy)",
}


def fetch_public(name: str, data_root: str | Path, *, tqdm_class: object = None) -> tuple[Path, list[str]]:
    """Download ``name``'s public files into ``data_root`` (resuming, verified; see :mod:`starft_cli.download`)
    and put them in place atomically; returns the dataset's folder and the sha256 of each file fetched.

    Raises :class:`DataError` for a dataset without a public source, and what
    :func:`starft_cli.download.download_verified` / :func:`~starft_cli.download.extract_atomic` raise."""
    import os
    import shutil

    from starft_cli.download import download_verified, extract_atomic

    source = PUBLIC_SOURCES.get(name)
    if source is None:
        raise DataError(f"dataset '{name}' has no public download location", NEEDS_LOGIN.get(name))
    root = Path(data_root).expanduser()
    final = root / source.folder
    if final.exists():
        raise DataError(f"{final} exists already", f"Check it with `starft data check {name} --data-root {root}`")
    downloads = root / ".downloads"
    hashes = []
    again = f"Run `starft data download {name} --data-root {root}` again: it resumes"
    fetched: list[tuple[PublicFile, Path]] = []
    for item in source.files:
        path = downloads / item.name
        sha = download_verified(
            item.url,
            path,
            sha256=item.sha256,
            size=item.size,
            what=f"{name}: {item.name}",
            again=again,
            tqdm_class=tqdm_class,
        )
        hashes.append(f"{item.name} sha256 {sha}")
        fetched.append((item, path))
    archives = [(i, p) for i, p in fetched if i.extract]
    if archives:
        item, path = archives[0]
        extract_atomic(path, root, source.folder, inner=item.inner)
        path.unlink()
    else:
        work = root / f".{source.folder}.placing"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for item, path in fetched:
            os.replace(path, work / item.name)
        os.replace(work, final)
    return final, hashes
