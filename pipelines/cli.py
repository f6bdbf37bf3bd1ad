"""The ``resulic`` command line. Subcommands import their heavy modules lazily."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _add_weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights-dir", help="TAEF2 weights directory (default: $RESULIC_TAEF2_DIR or ../shared/weights/taef2)")
    p.add_argument("--latent-codec", help="latent codec weights (default: the preset's shipped file)")


def _apply_weights_args(args: argparse.Namespace) -> None:
    if getattr(args, "weights_dir", None):
        os.environ["RESULIC_TAEF2_DIR"] = args.weights_dir
    if getattr(args, "latent_codec", None):
        os.environ["RESULIC_LATENT_CODEC"] = args.latent_codec


def cmd_encode(args: argparse.Namespace) -> int:
    import codec

    t = time.perf_counter()
    data = codec.encode(Path(args.input), rate=args.rate, target_bpp=args.target_bpp, preset=args.preset)
    Path(args.output).write_bytes(data)
    meta = codec.info(data)
    print(f"{args.output}: {meta['bytes']} bytes, {meta['bpp']:.5f} bpp, {meta['width']}x{meta['height']}, "
          f"preset {meta['preset']} rate {meta['rate']:g}, {time.perf_counter() - t:.2f} s")  # fmt: skip
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    import codec
    from codec.images import load_image
    from codec.metrics import ms_ssim, psnr

    path = Path(args.input)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read file ({e.strerror or e})") from e
    t = time.perf_counter()
    try:
        image = codec.decode(data)
    except codec.BitstreamError as e:
        raise codec.BitstreamError(f"{path}: {e}") from e
    image.save(args.output)
    line = f"{args.output}: {image.width}x{image.height}, {time.perf_counter() - t:.2f} s"
    if args.reference:
        ref = load_image(args.reference)
        line += f", PSNR {psnr(ref, image):.2f} dB, MS-SSIM {ms_ssim(ref, image):.4f}"
    print(line)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import codec

    path = Path(args.input)
    try:
        meta = codec.info(path.read_bytes())
    except codec.BitstreamError as e:
        raise codec.BitstreamError(f"{path}: {e}") from e
    if args.json:
        print(json.dumps(meta))
    else:
        for k, v in meta.items():
            print(f"{k:>14}: {v}")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from codec.autoencoder import resolve_weights_dir
    from codec.weights_fetch import DEFAULT_BASE_URL, fetch_weights

    dest = resolve_weights_dir(args.dest)
    for path in fetch_weights(dest, args.base_url or DEFAULT_BASE_URL, force=args.force):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resulic", description="Ultra-low-bitrate generative photo archive codec.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("encode", help="compress one image to a bitstream")
    p.add_argument("input")
    p.add_argument("output")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rate", type=float, help="rate in trained-point units (0 = lowest; fractions interpolate)")
    g.add_argument("--target-bpp", type=float, help="highest rate whose stream fits this many bits per pixel")
    p.add_argument("--preset", default="taef2")
    _add_weights_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="restore an image from a bitstream")
    p.add_argument("input")
    p.add_argument("output", help="image file; the format follows the suffix")
    p.add_argument("--reference", help="original image: also print PSNR and MS-SSIM against it")
    _add_weights_args(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("info", help="describe a bitstream without decoding it")
    p.add_argument("input")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("weights", help="manage model weights")
    wsub = p.add_subparsers(dest="weights_command", required=True)
    f = wsub.add_parser("fetch", help="download the TAEF2 weights from their public source")
    f.add_argument("--dest", help="target directory (default: the configured weights directory)")
    f.add_argument("--base-url", help="where the files live (http, https or file URL)")
    f.add_argument("--force", action="store_true", help="download even when intact files are present")
    f.set_defaults(func=cmd_weights_fetch)

    p = sub.add_parser("train", help="train the project's own models")
    tsub = p.add_subparsers(dest="train_command", required=True)
    tsub.add_parser("latent-codec", help="train the taef2 latent codec (its own --help lists the flags)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["train", "latent-codec"]:  # the trainer owns all of its flags, --help included
        from codec.train_latent_codec import main as train

        train(argv[2:], prog="resulic train latent-codec")
        return 0
    args = build_parser().parse_args(argv)
    _apply_weights_args(args)
    from codec.bitstream import BitstreamError
    from codec.images import ImageError
    from codec.weights_fetch import FetchError

    try:
        return args.func(args)
    except (ImageError, BitstreamError, FetchError, FileNotFoundError, KeyError, ValueError, OSError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"resulic: error: {msg.splitlines()[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
