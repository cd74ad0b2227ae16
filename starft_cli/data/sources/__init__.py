"""Where a registered dataset's bytes come from, apart from its folder layout under ``--data-root``.

:mod:`~starft_cli.data.sources.hub`: the webdataset copies on the Hugging Face Hub (CLIP_benchmark's ``wds/``
datasets, the ``clip-benchmark`` organisation), fetched through huggingface_hub and read with
:mod:`starft_cli.data.shards`. Every source of a dataset yields the same samples, labels, class order and groups
as its folder layout (a Hub copy whose protocol differs is registered under a name of its own).
"""

from typing import Any


def describe_source(ds: Any) -> str:
    """Where ``ds``'s bytes came from, as results.json records it: ``REPO@COMMIT (FOLDER)`` for a Hub copy,
    ``wds:FIRST_SHARD (+N more)`` for shards, ``local layout`` otherwise."""
    source = getattr(ds, "source", None)
    if not isinstance(source, dict):
        return "local layout"
    if source.get("kind") == "hub":
        return f"{source['repo']}@{source['revision']} ({source['split']})"
    shards = source.get("shards") or []
    more = f" (+{len(shards) - 1} more)" if len(shards) > 1 else ""
    return f"wds:{shards[0] if shards else '?'}{more}"
