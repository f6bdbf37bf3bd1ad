"""Stage a GPU training burst for a machine that takes the checkout with a small upload.

A lent GPU machine (one H100 or H200 for a few minutes) receives this checkout plus named
folders, 64 MiB in all, and has PyTorch but not the project's other packages. The tracked tree
is larger than that (every release's weights are kept, so that old streams still decode), so:

    python infra/gpu_burst/stage.py stage      # here: fill .gpu/, move unneeded files to .offload/
    (device) bash infra/gpu_burst/burst.sh     # there, with .gpu carried; results in $OUT
    python infra/gpu_burst/stage.py collect FILES_AT runs/burst1   # here: rebuild the export
    python infra/gpu_burst/stage.py restore    # here: put the moved files back

``TRAINER=cdm bash infra/gpu_burst/burst.sh`` trains a CDM for the staged release instead
(``resulic train cdm-perceptual``); ``collect`` then brings back its ``cdm/`` folder.

``stage`` writes ``.gpu/``: the wheels PyTorch's image lacks (CompressAI's rANS extension for
CPython 3.12, pytorch-msssim), TAEF2's weights, the LPIPS weights (training's perceptual term;
DISTS, the judge, is scored back here by ``benchmarks/decoder_compare.py --model``) and as many
training photos, downscaled to WebP, as the remaining room holds (about 270 at 512 pixels).
Files that the fine-tuned release does not read (other releases' weights, the docs' images) go
to ``.offload/`` until ``restore``.
Both folders are git-ignored. Training photos only: never an evaluation set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from evaluation.weights import LPIPS_CACHE, cache_dir  # noqa: E402
from training.data import list_images  # noqa: E402

LIMIT = 64 * 2**20  # what the device tool carries: tracked and untracked files plus carried folders
MARGIN = 2 * 2**20  # for files written between staging and the run (a log, a note)
WHEELS = ("compressai", "pytorch-msssim")  # the packages training imports that PyTorch's image lacks
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + ["manylinux2014_x86_64"]
RELEASE_FILE_KEYS = ("latent_codec", "text_model", "cdm", "decoder", "detail_gains")
DOCS_KEPT_BELOW = 100_000  # docs files larger than this (images, result CSVs) are offloaded


def release_files(entry: dict) -> set[str]:
    """The paths under ``codec/weights`` that one releases.json entry reads."""
    return {entry[k] for k in RELEASE_FILE_KEYS if k in entry}


def offload_plan(tracked: list[str], releases: list[dict], model_id: str) -> list[str]:
    """Tracked files a burst that fine-tunes ``model_id`` does not read: other releases' weights
    (a file or a folder named by an entry) and the docs' large files."""
    keep = next((release_files(e) for e in releases if e["model_id"] == model_id), None)
    if keep is None:
        raise SystemExit(f"no release {model_id} in codec/weights/releases.json")
    other = set().union(*(release_files(e) for e in releases)) - keep
    out = []
    for path in tracked:
        rel = path.removeprefix("codec/weights/")
        named = rel != path and any(rel == f or rel.startswith(f.rstrip("/") + "/") for f in other)
        big_doc = path.startswith("docs/") and (ROOT / path).stat().st_size > DOCS_KEPT_BELOW
        if named or big_doc:
            out.append(path)
    return out


def git_lines(*args: str) -> list[str]:
    res = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line for line in res.stdout.splitlines() if line]


def travelling_bytes() -> int:
    """What the device tool sends: tracked files present, untracked files not ignored, and .gpu/."""
    files = git_lines("ls-files") + git_lines("ls-files", "--others", "--exclude-standard")
    size = sum((ROOT / f).stat().st_size for f in files if (ROOT / f).is_file())
    return size + sum(p.stat().st_size for p in (ROOT / ".gpu").rglob("*") if p.is_file())


def training_photos(folders: list[Path], held_out: int) -> list[Path]:
    """The photos of ``folders`` in order, less the last ``held_out`` of the first (the photos
    that ``decoder_compare.py`` scores the burst on)."""
    first = list_images(folders[0])
    return first[: len(first) - held_out] + [p for f in folders[1:] for p in list_images(f)]


def stage_photos(photos: list[Path], dst: Path, long_side: int, budget: int, quality: int = 90) -> tuple[int, int]:
    """WebPs at ``long_side`` in ``dst``, photo by photo until ``budget`` bytes; (written, bytes).
    WebP at quality 90: 40 kB a 512-pixel photo, where JPEG at 90 takes 47 kB."""
    dst.mkdir(parents=True, exist_ok=True)
    count, used = 0, 0
    for path in photos:
        img = Image.open(path).convert("RGB")
        img.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
        target = dst / f"{path.parent.name}-{path.stem}.webp"
        img.save(target, quality=quality)
        size = target.stat().st_size
        if used + size > budget:
            target.unlink()
            break
        count, used = count + 1, used + size
    return count, used


def fetch_wheels(dst: Path) -> None:
    """CPython 3.12 manylinux wheels of ``WHEELS``, at the versions installed here."""
    from importlib.metadata import version

    dst.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version(name)}" for name in WHEELS]
    plats = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *plats, "-d", str(dst), *pins],
                   check=True)  # fmt: skip


def stage(args: argparse.Namespace) -> None:
    gpu, off = ROOT / ".gpu", ROOT / ".offload"
    if (off / "MANIFEST.json").exists():
        raise SystemExit(".offload/ holds files from an earlier stage: run `restore` first")
    releases = json.loads((ROOT / "codec/weights/releases.json").read_text())["taef2"]
    model_id = args.model_id or releases[-1]["model_id"]
    moved = offload_plan(git_lines("ls-files"), releases, model_id)
    shutil.rmtree(gpu, ignore_errors=True)
    if not args.no_wheels:
        fetch_wheels(gpu / "whl")
    shutil.copytree(args.taef2, gpu / "taef2")
    (gpu / "metrics").mkdir()
    for name in (LPIPS_CACHE, "NOTICE"):
        shutil.copy2(Path(args.metric_weights) / name, gpu / "metrics" / name)
    budget = LIMIT - MARGIN - travelling_bytes() + sum((ROOT / p).stat().st_size for p in moved)
    if budget <= 0:
        raise SystemExit(f"no room for photos: {(LIMIT - MARGIN - budget) / 2**20:.1f} MiB would travel before them")
    photos = training_photos([Path(f) for f in args.data], args.held_out)
    count, used = stage_photos(photos, gpu / "photos", args.long_side, budget)
    # the tree changes only once everything is staged: an error above leaves it as it was
    off.mkdir(exist_ok=True)
    (off / "MANIFEST.json").write_text(json.dumps(moved, indent=1))
    for path in moved:
        (off / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(ROOT / path, off / path)
    (gpu / "STAGED.json").write_text(json.dumps({"model_id": model_id, "photos": count, "long_side": args.long_side}))
    print(f"offloaded {len(moved)} files; staged {count} of {len(photos)} photos ({used / 2**20:.1f} MiB) at a long side of "
          f"{args.long_side}; {travelling_bytes() / 2**20:.1f} MiB travel (limit {LIMIT / 2**20:.0f})")  # fmt: skip
    print("device: run `bash infra/gpu_burst/burst.sh` with carry ['.gpu'], then `collect` and `restore` here")


def restore(_: argparse.Namespace) -> None:
    off = ROOT / ".offload"
    manifest = off / "MANIFEST.json"
    if not manifest.exists():
        raise SystemExit("nothing to restore: .offload/MANIFEST.json is missing")
    for path in json.loads(manifest.read_text()):
        shutil.move(off / path, ROOT / path)
    shutil.rmtree(off)
    print("restored; git status:", *git_lines("status", "--short") or ["clean"], sep="\n")


def collect(args: argparse.Namespace) -> None:
    """Rebuild a burst's export (a latent codec comes back in parts; a CDM as its folder) and
    check every SHA-256."""
    src, dst = Path(args.files_at), Path(args.into)
    dst.mkdir(parents=True, exist_ok=True)
    parts = sorted(src.glob("latent_codec.safetensors.part-*"))
    if parts:
        with open(dst / "latent_codec.safetensors", "wb") as f:
            for part in parts:
                f.write(part.read_bytes())
    for p in src.rglob("*"):
        if ".part-" not in p.name and p.is_file():
            (dst / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst / p.relative_to(src))
    names = []
    for line in (src / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        if hashlib.sha256((dst / name).read_bytes()).hexdigest() != digest:
            raise SystemExit(f"{name}: SHA-256 mismatch after collecting")
        names.append(name)
    print(f"{dst}: {', '.join(names)} ({len(parts)} parts), checksums verified")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage")
    s.add_argument("--model-id", help="the release the burst fine-tunes (default: the newest)")
    s.add_argument("--data", nargs="+", default=["../shared/datasets/photos-train-v2", "../shared/datasets/photos-train"],
                   help="training photo folders, in order of preference (never an evaluation set)")  # fmt: skip
    s.add_argument("--held-out", type=int, default=20,
                   help="the last N photos of the first folder are not staged: the burst is scored on them")  # fmt: skip
    s.add_argument("--long-side", type=int, default=512)
    s.add_argument("--taef2", default="../shared/weights/taef2")
    s.add_argument("--metric-weights", default=str(cache_dir()),
                   help=f"a folder with {LPIPS_CACHE} (`resulic weights fetch-metrics`)")  # fmt: skip
    s.add_argument("--no-wheels", action="store_true", help="skip the wheels (a machine with the packages)")
    sub.add_parser("restore")
    c = sub.add_parser("collect")
    c.add_argument("files_at", help="the folder the device's $OUT came back to")
    c.add_argument("into", help="where the export goes (a folder `decoder_compare.py --model` reads, or --cdm INTO/cdm)")
    args = ap.parse_args(argv)
    {"stage": stage, "restore": restore, "collect": collect}[args.cmd](args)


if __name__ == "__main__":
    main()
