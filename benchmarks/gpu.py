"""Encode and decode throughput on CPU and GPU, and the cross-device symbol check.

    python benchmarks/gpu.py FOLDER [--images 8] [--rate 3] [--batch 4] [--threads 2]

Every photo of FOLDER is encoded (verification on, as a pipeline does) and decoded on each
device this machine has, in batches of ``--batch`` images of one size. Prints images per second
per device, then whether streams encoded on one device entropy-decode to exactly the encoder's
symbols on the other (they must: the entropy parameters are exact integers on every device).
Without CUDA it prints the CPU row and says the GPU rows are pending.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import codec  # noqa: E402
from codec.encoder import encode_with_symbols, verify  # noqa: E402
from codec.images import load_image  # noqa: E402
from codec.parsing import parse  # noqa: E402
from codec.presets import load_preset  # noqa: E402
from training.data import list_images  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _throughput(images: list, device: str, rate: float, batch: int) -> tuple[float, float, list]:
    p = load_preset(device=device)
    settings = codec.EncodeSettings(rate=rate)
    groups: dict[tuple[int, int], list] = {}
    for im in images:
        groups.setdefault(im.size, []).append(im)
    chunks = [g[i : i + batch] for g in groups.values() for i in range(0, len(g), batch)]
    encode_with_symbols(chunks[0][:1], settings, preset=p)  # warm-up (kernels, caches)
    _sync(device)
    t = time.perf_counter()
    pairs = []
    for chunk in chunks:
        for stream, y_hat in encode_with_symbols(chunk, settings, preset=p):
            verify(stream, y_hat, p)
            pairs.append((stream, y_hat))
    _sync(device)
    enc = len(images) / (time.perf_counter() - t)
    t = time.perf_counter()
    codec.decode_batch([s for s, _ in pairs], preset=p)
    _sync(device)
    return enc, len(images) / (time.perf_counter() - t), pairs


def _same_symbols(pairs: list, device: str) -> bool:
    for stream, y_hat in pairs:
        s, p = parse(stream, device=device)
        got = p.latent_codec.decompress_symbols([s.latent], [s.hyper_latent], p.z_shape(*s.header.coded_size),
                                                s.header.rate_level)  # fmt: skip
        if not torch.equal(got.cpu(), y_hat.cpu()):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--rate", type=float, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images = [load_image(f) for f in list_images(Path(args.folder))[: args.images]]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    p = load_preset()
    print(f"model {p.model_id.hex()}, {len(images)} images, rate {args.rate:g}, batch {args.batch}, "
          f"{torch.get_num_threads()} CPU threads" + (f", {torch.cuda.get_device_name()}" if len(devices) > 1 else ""))  # fmt: skip
    print("| device | encode img/s | decode img/s |\n|---|---|---|")
    made = {}
    for d in devices:
        enc, dec, made[d] = _throughput(images, d, args.rate, args.batch)
        print(f"| {d} | {enc:.3f} | {dec:.3f} |")
    if len(devices) == 1:
        print("| cuda | pending (no CUDA device here) | |")
        return
    print("\n| encoded on | decoded on | symbols identical |\n|---|---|---|")
    for enc_on, dec_on in (("cuda", "cpu"), ("cpu", "cuda")):
        print(f"| {enc_on} | {dec_on} | {'yes' if _same_symbols(made[enc_on], dec_on) else 'NO'} |")


if __name__ == "__main__":
    main()
