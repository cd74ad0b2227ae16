"""Parity with CLIP_benchmark on the same webdataset shards (a script, not a CI test).

    python benchmarks/hub_parity.py [--venv /tmp/cb-venv] [--samples 60]

1. Makes a tiny CIFAR-10-like test set (tests/layouts.py) and writes it as a Hub webdataset copy (the layout of the
   clip-benchmark repositories: classnames.txt, zeroshot_classification_templates.txt, test/nshards.txt,
   test/0..n.tar), served twice from this machine: by the test Hub (tests/hubserver.py), from which starft fetches it
   through huggingface_hub, and by a plain HTTP server, from which CLIP_benchmark reads it as ``wds/...``.
2. Installs CLIP_benchmark 1.6.2 into a venv of its own (``--venv``; it sees this environment's torch and open_clip
   through a .pth file, so nothing large is downloaded).
3. Evaluates the same tiny model (``starft-tiny:none``, its weights saved once and loaded by both) with
   CLIP_benchmark's ``build_dataset("wds/...")`` and ``zeroshot_classification.evaluate`` (amp off, float32 on CPU),
   and with starft (``--data wds:`` on the downloaded shards: their classnames.txt and templates), and prints top-1,
   top-5 and mean per-class recall side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CB_SCRIPT = r"""
import json, sys, torch, open_clip
from clip_benchmark.datasets.builder import build_dataset
from clip_benchmark.metrics import zeroshot_classification as zsc
config, weights, root, batch, arch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
open_clip.add_model_config(config)
model, _, preprocess = open_clip.create_model_and_transforms(arch)
model.load_state_dict(torch.load(weights, weights_only=True))
model.eval()
tokenizer = open_clip.get_tokenizer(arch)
ds = build_dataset("wds/parity", root=root, transform=preprocess, split="test")
loader = torch.utils.data.DataLoader(ds.batched(batch), batch_size=None, num_workers=0)
metrics = zsc.evaluate(model, loader, tokenizer, ds.classes, ds.templates, "cpu", amp=False)
print(json.dumps({k: float(v) for k, v in metrics.items()}))
"""


def make_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        import shutil

        subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(venv)], check=True)
    site = subprocess.run(
        [sys.executable, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True
    ).stdout.strip()
    target = next((venv / "lib").glob("python3*/site-packages"))
    (target / "starft_main.pth").write_text(site + "\n")
    probe = subprocess.run([str(python), "-c", "import clip_benchmark"], capture_output=True)
    if probe.returncode != 0:
        # requests: imported by clip_benchmark.datasets but not declared; numpy<2: its accuracy() calls float() on a
        # one-element array, which NumPy 2 refuses
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "clip_benchmark==1.6.2", "requests", "numpy<2"], check=True
        )
    return python


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "starft-clip-benchmark-venv")
    parser.add_argument(
        "--model",
        default="starft-demo-zero-shot",
        help="starft-demo-zero-shot (a CLIP pre-trained locally on spurious-digits: real, non-trivial predictions; "
        "built on first use, a few minutes) on the spurious-digits test split; or starft-tiny:none (random weights) "
        "on a CIFAR-10-like set of --samples images",
    )
    parser.add_argument("--samples", type=int, default=60, help="test images of the starft-tiny:none case")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hub-parity-"))
    os.environ.setdefault("STARFT_HOME", str(work / "home"))
    os.environ["HF_HUB_CACHE"] = str(work / "hf-cache")
    os.environ["HF_HUB_OFFLINE"] = "0"

    import torch
    from huggingface_hub import constants

    from starft_cli.data.registry import resolve
    from starft_cli.data.sources import hub as hubsrc
    from starft_cli.eval.runner import evaluate
    from starft_cli.eval.suites import Suite, SuiteEntry
    from starft_cli.models import load
    from tests.hubdata import repo_files
    from tests.hubserver import running_hub
    from tests.layouts import make_cifar10

    if args.model == "starft-tiny:none":
        make_cifar10(work / "data", per_file=args.samples)
        local = resolve("cifar10", work / "data", "test")
        copy = hubsrc.HUB_COPIES["cifar10"]
    else:
        local = resolve("spurious-digits", None, "test")  # generated into the starft cache
        copy = hubsrc.register_hub_copy(
            hubsrc.HubCopy("spurious-digits", "parity/wds_spurious-digits", {"test": hubsrc.HubSplit("test", 0)})
        )
    copy = hubsrc.register_hub_copy(dataclasses.replace(copy, splits={"test": hubsrc.HubSplit("test", len(local))}))
    files = repo_files(local, copy, per_shard=max(1, len(local) // 3))
    plain = work / "plain"
    for name, data in files.items():
        (plain / name).parent.mkdir(parents=True, exist_ok=True)
        (plain / name).write_bytes(data)

    loaded = load(args.model, device="cpu")
    arch = str(loaded.arch or "starft-tiny")
    weights = work / "model.pt"
    torch.save(loaded.model.state_dict(), weights)
    python = make_venv(args.venv)

    http_server, url = serve(plain)
    with running_hub() as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        constants.ENDPOINT = hub.url
        constants.HUGGINGFACE_CO_URL_TEMPLATE = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
        constants.HF_HUB_CACHE = os.environ["HF_HUB_CACHE"]
        hub.commit(copy.repo, files)
        fetched = hubsrc.download(copy.dataset, "test")
        shards = fetched.index.shards[0].parent
        entry = SuiteEntry(f"wds:{shards}", ("top1", "top5", "mean_per_class_recall"))
        ours = evaluate([loaded], Suite("parity", (entry,)), None, batch_size=32, use_cache=False)
    done = subprocess.run(
        [
            str(python),
            "-c",
            CB_SCRIPT,
            str(ROOT / f"starft_cli/model_configs/{arch}.json"),
            str(weights),
            url,
            "32",
            arch,
        ],
        capture_output=True,
        text=True,
    )
    http_server.shutdown()
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [
        ("top-1", "top1", "acc1"),
        ("top-5", "top5", "acc5"),
        ("mean per-class recall", "mean_per_class_recall", "mean_per_class_recall"),
    ]
    print(
        f"shards: {len(fetched.index.shards)} x test/*.tar, {len(local)} samples, {len(local.classnames)} classes; "
        f"model {args.model}"
    )
    print(f"{'metric':<24}{'CLIP_benchmark 1.6.2':>22}{'starft':>12}{'equal':>8}")
    for title, mine, cb in rows:
        a, b = theirs[cb], ours.value(entry.dataset, mine)
        print(f"{title:<24}{a:>22.6f}{b:>12.6f}{'yes' if abs(a - b) < 1e-6 else 'NO':>8}")


if __name__ == "__main__":
    main()
