"""What `resulic eval` writes: per-image and summary CSVs, BD-rates, RD plots and a Markdown report."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from pathlib import Path

from operators.archive import write_local

PER_IMAGE_COLUMNS = ["image", "codec", "setting", "bytes", "bpp", "psnr", "ms_ssim", "hf_ratio", "lpips", "dists",
                     "encode_s", "decode_s", "encode_mpix_s", "decode_mpix_s", "peak_rss_mib"]  # fmt: skip
SUMMARY_COLUMNS = ["codec", "setting", "images", "bpp", "psnr", "ms_ssim", "hf_ratio", "lpips", "dists", "fid", "kid",
                   "encode_s", "decode_s", "encode_mpix_s", "decode_mpix_s", "peak_rss_mib"]  # fmt: skip
BD_COLUMNS = ["codec", "anchor", "metric", "bd_rate_percent"]
# metric -> (plot file, axis label); LPIPS and DISTS only when measured
PLOTS = {"psnr": ("rd_psnr.png", "PSNR (dB)"), "ms_ssim": ("rd_ms_ssim.png", "MS-SSIM"),
         "lpips": ("rd_lpips.png", "LPIPS (AlexNet, v0.1; lower is better)"),
         "dists": ("rd_dists.png", "DISTS (lower is better)")}  # fmt: skip


def plotted(summary: list[dict]) -> list[str]:
    """The metrics that get a plot: PSNR and MS-SSIM always, the others where measured."""
    return [m for m in PLOTS if m in ("psnr", "ms_ssim") or any(s.get(m) is not None for s in summary)]


def _text(path: Path, text: str) -> None:
    write_local(path, text.encode())


def _csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
    _text(path, buf.getvalue())


def rd_plot(summary: list[dict], metric: str, path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.evaluate import curves

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for codec, pts in sorted(curves(summary, metric).items()):
        style = "-o" if codec.startswith("resulic") else "-" if codec.endswith("-best") else ":"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=codec, markersize=4,
                linewidth=2 if codec.endswith("-best") or codec.startswith("resulic") else 1)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (whole file)")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_local(path, buf.getvalue())
    plt.close(fig)


def _fmt(v, digits: int = 3) -> str:
    return "n/c" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _measured(env: dict) -> str:
    """Where and how long the measuring run ran, and whether this report was rebuilt from its CSV."""
    where = ("measuring machine not recorded" if env.get("cpus") is None
             else f"{env['cpus']} CPUs ({env['machine']}), Python {env['python']}")  # fmt: skip
    took = f"; measured in {env['wall_seconds']} s" if env.get("wall_seconds") is not None else ""
    return where + took + ("; rebuilt from per_image.csv" if env.get("rebuilt") else "")


def report(summary: list[dict], bd: list[dict], notes: list[str], env: dict, plots: str = "") -> str:
    """The Markdown report; ``plots`` is the path from the report to the folder holding the plots."""
    images = " ".join(f"![{PLOTS[m][1].split(' (')[0]}]({plots}{PLOTS[m][0]})" for m in plotted(summary))
    lines = [f"# Evaluation: {env['dataset']}", "",
             f"{env['images']} images; " + _measured(env)
             + f"; written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
             "bpp counts the whole file (headers and text included). hf_ratio is the reconstruction's "
             "high-frequency energy (mean squared Laplacian of the luma) over the original's: 1 keeps the "
             "texture, below 1 blurs it. LPIPS (AlexNet, v0.1) and DISTS are distances from the published "
             "weights: lower is better. peak MiB is the measuring process's peak resident memory while it coded "
             "(libraries and models already loaded included): a bound, not the codec's own need. n/c: not "
             "computed.", "", images, "", "## BD-rate", "",
             "Negative: fewer bits than the anchor at equal quality (equal PSNR, MS-SSIM, LPIPS or DISTS; "
             "over the quality range both cover, points that cost more and look worse left out; n/c where the "
             "curves share none). `<codec>-best` is the codec's best practical curve: at each quality, the "
             "fewest bits of full size, the 2x or the 4x downscale, each read between its points as BD-rate "
             "reads it.", "",
             "| codec | anchor | metric | BD-rate % |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {b['codec']} | {b['anchor']} | {b['metric']} | {_fmt(b['bd_rate_percent'], 1)} |" for b in bd]
    lines += ["", "## Means per codec and setting", "",
              "| codec | setting | bpp | PSNR | MS-SSIM | hf_ratio | LPIPS | DISTS | FID | KID | encode s | decode s "
              "| peak MiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {m['codec']} | {m['setting']} | {m['bpp']:.4f} | {_fmt(m['psnr'], 2)} | {_fmt(m['ms_ssim'])} | "
              f"{_fmt(m['hf_ratio'], 2)} | {_fmt(m['lpips'])} | {_fmt(m['dists'])} | {_fmt(m['fid'], 1)} | "
              f"{_fmt(m['kid'], 4)} | {_fmt(m['encode_s'])} | {_fmt(m['decode_s'])} | "
              f"{_fmt(m['peak_rss_mib'], 0)} |" for m in summary]  # fmt: skip
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, rows: list[dict], summary: list[dict], bd: list[dict], notes: list[str], env: dict,
                  report_path: Path | None = None) -> None:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    _csv(out / "per_image.csv", rows, PER_IMAGE_COLUMNS)
    _csv(out / "summary.csv", summary, SUMMARY_COLUMNS)
    _csv(out / "bd_rate.csv", bd, BD_COLUMNS)
    for metric, (name, label) in PLOTS.items():
        if metric in plotted(summary):
            rd_plot(summary, metric, out / name, label)
        else:  # an earlier run's plot of a metric this run did not measure would pass for this run's
            (out / name).unlink(missing_ok=True)
    _text(out / "report.md", report(summary, bd, notes, env))
    _text(out / "run.json", json.dumps(env, indent=1) + "\n")  # what --from-csv reads back (the anchor)
    if report_path is not None:  # a second copy elsewhere (docs/results.md), its plot links made relative
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(out, Path(report_path).parent)
        _text(Path(report_path), report(summary, bd, notes, env, plots=f"{rel}/"))
