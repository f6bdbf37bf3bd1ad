"""`resulic eval`: the project's codecs beside the classical ones on one image set, measured the
same way, into CSV files, plots and a report.

One task per (image, codec) runs every setting of that codec on that image: on a Ray cluster
when one is attached (``RAY_ADDRESS``), locally otherwise; a progress bar counts tasks.
Perceptual metrics that need pretrained networks (LPIPS, DISTS, FID, KID) are computed only
from their published weights (``pipelines.perceptual``; LPIPS and DISTS by default, from
``evaluation.weights.default_weights_dir()`` or ``--metric-weights``), never with random ones;
without them they are reported as not computed, with the reason. BD-rates are measured on PSNR,
MS-SSIM, LPIPS and DISTS (the last two lower-is-better: at equal LPIPS or DISTS).
"""

from __future__ import annotations

import io
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from codec.images import load_image
from codec.usage import UsageError
from evaluation.baselines import QUALITIES, SCALES, Classical, available
from evaluation.metrics import bd_rate, envelope, hf_energy_ratio, ms_ssim, psnr
from pipelines.peak_memory import PeakMemory

# -scaled: coded with --scale auto (at 1/2 or 1/4 of the size at ultra-low rates);
# -refined: each latent refined by EVAL_REFINE_STEPS steps (codec.latent_refine);
# -budget: at each byte budget (--target-bpp B --scale auto, what a user with a budget runs), so
#   the figures answer "how good at no more than B bpp" per image, not only on the mean
RESULIC_CODECS = ("resulic", "resulic-cdm", "resulic-text", "resulic-scaled", "resulic-cdm-scaled",
                  "resulic-refined", "resulic-refined-scaled", "resulic-budget")  # fmt: skip
EVAL_REFINE_STEPS = 40
CLASSICAL = ("jpeg", "webp", "avif", "jxl")
DEFAULT_CODECS = ("resulic", "resulic-budget", "resulic-cdm", "jpeg", "webp", "avif", "jxl")
COMPUTED_METRICS = ("psnr", "ms_ssim", "hf_ratio")
PAIR_METRICS = ("lpips", "dists")  # per image
SET_METRICS = ("fid", "kid")  # per setting, over all its images
PERCEPTUAL_METRICS = PAIR_METRICS + SET_METRICS
BD_METRICS = ("psnr", "ms_ssim", "lpips", "dists")
LOWER_IS_BETTER = ("lpips", "dists")
DEFAULT_RATES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
DEFAULT_BUDGETS = (0.005, 0.012, 0.03, 0.1)  # bpp: reference budgets across the ultra-low range
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


@dataclass
class EvalOptions:
    rates: tuple[float, ...] = DEFAULT_RATES
    budgets: tuple[float, ...] = DEFAULT_BUDGETS  # bpp, for resulic-budget
    captions: dict[str, str] = field(default_factory=dict)  # image stem -> caption (for resulic-text)
    metric_weights: str | None = None  # folder of the perceptual metrics' published weights
    perceptual: tuple[str, ...] = ()  # the perceptual metrics to compute (their weights were checked)


def _row(image: str, codec: str, setting: str, ref: Image.Image, out: Image.Image, nbytes: int,
         t_enc: float, t_dec: float, peak: int, options: EvalOptions) -> dict:  # fmt: skip
    """One setting's measurements; LPIPS and DISTS are added by ``_finish``."""
    from pipelines import perceptual

    mpix = ref.width * ref.height / 1e6
    row = {"image": image, "codec": codec, "setting": setting, "bytes": nbytes,
           "bpp": 8 * nbytes / (ref.width * ref.height), "psnr": psnr(ref, out), "ms_ssim": ms_ssim(ref, out),
           "hf_ratio": hf_energy_ratio(ref, out), **dict.fromkeys(PERCEPTUAL_METRICS),
           "encode_s": t_enc, "decode_s": t_dec, "encode_mpix_s": mpix / t_enc if t_enc else None,
           "decode_mpix_s": mpix / t_dec if t_dec else None, "peak_rss_mib": peak / 2**20}  # fmt: skip
    if set(SET_METRICS) & set(options.perceptual):  # features for the set-level metrics (not written to CSV)
        row["_features"] = perceptual.inception_features(options.metric_weights, out)
    return row


def _finish(rows: list[dict], ref: Image.Image, outs: list[Image.Image], options: EvalOptions) -> list[dict]:
    """LPIPS and DISTS of every setting (the reference's features computed once), and the
    reference's Inception features for the set-level metrics."""
    from pipelines import perceptual

    for m in PAIR_METRICS:
        if m in options.perceptual:
            for r, value in zip(rows, perceptual.pair_metrics(m, options.metric_weights, ref, outs)):
                r[m] = value
    if set(SET_METRICS) & set(options.perceptual):
        real = perceptual.inception_features(options.metric_weights, ref)
        for r in rows:
            r["_reference_features"] = real
    return rows


def _timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def run_task(path: str, codec: str, options: EvalOptions) -> list[dict]:
    """Every setting of ``codec`` on one image, read as ``compress`` reads it (EXIF orientation,
    alpha on white, 16-bit and grayscale to 8-bit RGB), so both measure the same pixels."""
    ref = load_image(path)
    name = Path(path).stem
    rows, outs = [], []
    if codec in RESULIC_CODECS:
        import codec as rc
        from codec.semantic.residual import word_residual

        text = word_residual(options.captions.get(name, ""), "") if codec == "resulic-text" else ""
        decoder = "cdm" if codec.startswith("resulic-cdm") else "plain"
        scale = "auto" if codec.endswith("-scaled") else 1
        refine = EVAL_REFINE_STEPS if codec.startswith("resulic-refined") else 0
        if codec == "resulic-budget":
            settings = [(f"bpp<={b:g}", dict(target_bpp=b, scale="auto")) for b in options.budgets]
        else:
            settings = [(f"rate={r:g}", dict(rate=r, scale=scale)) for r in options.rates]
        for setting, choice in settings:
            with PeakMemory() as mem:
                stream, t_enc = _timed(rc.encode, ref, text=text, refine_steps=refine, **choice)
                out, t_dec = _timed(rc.decode, stream, decoder=decoder)
            rows.append(_row(name, codec, setting, ref, out, len(stream), t_enc, t_dec, mem.peak, options))
            outs.append(out)
        return _finish(rows, ref, outs, options)
    fmt, _, scale = codec.partition("-")
    c = Classical(fmt, int(scale.rstrip("x") or 1))
    for q in QUALITIES[fmt]:
        with PeakMemory() as mem:
            data, t_enc = _timed(c.encode, ref, q)
            out, t_dec = _timed(c.decode, data, ref.size)
        rows.append(_row(name, codec, f"q={q}", ref, out, len(data), t_enc, t_dec, mem.peak, options))
        outs.append(out)
    return _finish(rows, ref, outs, options)


def expand_codecs(codecs: list[str]) -> tuple[list[str], list[str]]:
    """Codec names to run (classical ones at each downscale) and notes on those that cannot run here."""
    run, notes = [], []
    for c in codecs:
        if c in CLASSICAL:
            if available(c):
                run += [c if s == 1 else f"{c}-{s}x" for s in SCALES]
            else:
                notes.append(f"{c}: not available in this Pillow (install pillow-jxl-plugin for JPEG XL)")
        elif c in RESULIC_CODECS:
            if reason := _unavailable(c):
                notes.append(f"{c}: {reason}")
            else:
                run.append(c)
        else:
            raise UsageError(f"unknown codec {c!r} (known: {', '.join(RESULIC_CODECS + CLASSICAL)})")
    return run, notes


def _unavailable(codec: str) -> str | None:
    """Why the default model cannot run this resulic codec (no CDM, or it refuses ``--refine``);
    None when it can. Loads the model only for the codecs that depend on it."""
    if not codec.startswith(("resulic-cdm", "resulic-refined")):
        return None
    from codec.latent_refine import refusal
    from codec.presets import load_preset

    p = load_preset()
    if codec.startswith("resulic-cdm"):
        return "the default preset's model has no CDM denoiser" if p.cdm is None else None
    return refusal(p.latent_codec)


def list_images(dataset: str, limit: int | None) -> list[str]:
    """The folder's images (the first ``limit``); rows and captions are keyed by file stem, so
    two files of one stem are refused."""
    if limit is not None and limit < 1:
        raise UsageError(f"--images must be a positive number of images, got {limit}")
    paths = sorted(str(p) for p in Path(dataset).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images in {dataset}")
    stems: dict[str, list[str]] = {}
    for p in paths:
        stems.setdefault(Path(p).stem, []).append(Path(p).name)
    if clash := [names for names in stems.values() if len(names) > 1]:
        raise UsageError(f"images are named by their stem, and these share one: {'; '.join(', '.join(n) for n in clash)}")
    return paths[:limit] if limit else paths


def _task(path: str, codec: str, options: EvalOptions) -> list[dict] | str:
    """``run_task``'s rows, or why it failed: one image or codec failing costs only its own rows."""
    try:
        return run_task(path, codec, options)
    except Exception as e:  # noqa: BLE001 - reported per task (a note, and exit 1), the others still measured
        return f"{Path(path).name}, {codec}: failed ({type(e).__name__}: {e})"


def run_all(images: list[str], codecs: list[str], options: EvalOptions,
            progress: bool = True) -> tuple[list[dict], list[str]]:  # fmt: skip
    """Every (image, codec) task's rows, and a line for each task that failed."""
    from tqdm import tqdm

    tasks = [(p, c) for p in images for c in codecs]
    bar = tqdm(total=len(tasks), desc="eval", unit="task", disable=not progress)
    rows: list[dict] = []
    failed: list[str] = []

    def take(result: list[dict] | str) -> None:
        if isinstance(result, str):
            failed.append(result)
        else:
            rows.extend(result)
        bar.update()

    if os.environ.get("RAY_ADDRESS"):  # a task per (image, codec) on the attached cluster
        import ray

        from pipelines.ray_runtime import ensure_ray, worker_env

        ensure_ray()
        remote = ray.remote(num_cpus=1, max_retries=0, runtime_env={"env_vars": worker_env()})(_task)
        pending = [remote.remote(p, c, options) for p, c in tasks]
        names = {ref: f"{Path(p).name}, {c}" for ref, (p, c) in zip(pending, tasks)}
        while pending:
            done, pending = ray.wait(pending)
            for ref in done:
                try:
                    take(ray.get(ref))
                except ray.exceptions.RayError as e:  # its worker died (out of memory, a crash in a codec library)
                    take(f"{names[ref]}: failed ({type(e).__name__}: {str(e).splitlines()[0]})")
    else:
        for p, c in tasks:
            take(_task(p, c, options))
    bar.close()
    return rows, failed


def summarise(rows: list[dict], known: dict[tuple[str, str], dict] | None = None) -> list[dict]:
    """Means over images per (codec, setting), sorted by codec then bpp; FID and KID over each
    setting's image set when the rows carry Inception features, else from ``known`` (a previous
    summary's values, when rebuilding)."""
    from pipelines.perceptual import set_metric

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["codec"], r["setting"]), []).append(r)
    out = []
    for (codec, setting), rs in groups.items():
        m = {"codec": codec, "setting": setting, "images": len(rs)}
        for k in ("bpp", *COMPUTED_METRICS, *PAIR_METRICS, "encode_s", "decode_s", "encode_mpix_s", "decode_mpix_s",
                  "peak_rss_mib"):  # fmt: skip
            vals = [r[k] for r in rs if r.get(k) is not None]
            m[k] = float(np.mean(vals)) if vals else None
        for k in SET_METRICS:
            m[k] = (known or {}).get((codec, setting), {}).get(k)
            if all("_features" in r for r in rs):
                real = np.concatenate([r["_reference_features"] for r in rs])
                m[k] = set_metric(k, real, np.concatenate([r["_features"] for r in rs]))
        out.append(m)
    return sorted(out, key=lambda m: (m["codec"], m["bpp"]))


def curves(summary: list[dict], metric: str) -> dict[str, list[tuple[float, float]]]:
    """(bpp, metric) per codec where measured, plus for each classical format run at several scales
    its best practical curve ``<fmt>-best``: the envelope of its scales' curves (the fewest bits at
    each quality; quality is highest, or lowest for LPIPS and DISTS)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for m in summary:
        if m.get(metric) is not None:
            out.setdefault(m["codec"], []).append((m["bpp"], m[metric]))
    sign = -1 if metric in LOWER_IS_BETTER else 1
    for fmt in CLASSICAL:
        scales = [pts for c, pts in out.items() if c == fmt or c.startswith(f"{fmt}-")]
        if len(scales) > 1:
            best = envelope([[(r, sign * q) for r, q in pts] for pts in scales])
            out[f"{fmt}-best"] = [(r, sign * q) for r, q in best]
    return {c: sorted(pts) for c, pts in out.items()}


def bd_rates(summary: list[dict], anchor: str, metrics: tuple[str, ...] = BD_METRICS) -> list[dict]:
    """BD-rate of every codec against ``anchor`` on each of ``metrics`` that was measured (LPIPS
    and DISTS read lower-is-better, which decides which of a curve's points are dominated)."""
    out = []
    for metric in [m for m in metrics if any(s.get(m) is not None for s in summary)]:
        cs = curves(summary, metric)
        if anchor not in cs:
            raise UsageError(f"anchor {anchor!r} was not run (ran: {', '.join(sorted(cs))})")
        for codec, pts in sorted(cs.items()):
            if codec == anchor:
                continue
            try:
                value = bd_rate(cs[anchor], pts, lower_is_better=metric in LOWER_IS_BETTER)
            except ValueError:
                value = None  # the curves share no quality range
            out.append({"codec": codec, "anchor": anchor, "metric": metric, "bd_rate_percent": value})
    order = {m: i for i, m in enumerate(metrics)}
    return sorted(out, key=lambda b: (b["codec"], order[b["metric"]]))


class EvalError(ValueError):
    """Nothing could be measured (every task failed): the run's failure, not a bug."""


@dataclass
class EvalResult:
    rows: list[dict]
    summary: list[dict]
    bd: list[dict]
    notes: list[str]
    failed: list[str] = field(default_factory=list)  # a line per (image, codec) task that failed


def _check_plan(run: list[str], anchor: str | None, rates: list[float] | None) -> str:
    """The anchor (given, or the default) and the rates checked before anything is measured: a
    typo should cost a second, not a run."""
    best = [f"{fmt}-best" for fmt in CLASSICAL if any(c.startswith(f"{fmt}-") for c in run)]
    anchor = anchor or ("avif-best" if "avif-best" in best else run[0])
    if anchor not in run + best:
        raise UsageError(f"anchor {anchor!r} is not one of the codecs run ({', '.join(run + best)})")
    if any(c in RESULIC_CODECS for c in run):
        from codec.presets import load_preset
        from codec.settings import rate_to_level

        p = load_preset()  # missing weights stop the run here, not as a note on every task at its end
        if any(c in RESULIC_CODECS and c != "resulic-budget" for c in run):
            for r in rates or ():
                rate_to_level(p, r)  # a UsageError names the model's range
    return anchor


def coverage_notes(rows: list[dict]) -> list[str]:
    """A note for each codec and setting measured on fewer images than the set (a task failed):
    its means are over other images than the rest's."""
    everything = {r["image"] for r in rows}
    groups: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        groups.setdefault((r["codec"], r["setting"]), set()).add(r["image"])
    return [f"{c} {s}: measured on {len(imgs)} of {len(everything)} images (not comparable with the others)"
            for (c, s), imgs in sorted(groups.items()) if len(imgs) < len(everything)]  # fmt: skip


def over_budget_notes(rows: list[dict]) -> list[str]:
    """resulic-budget rows above their budget (the lowest rate at the smallest size is larger)."""
    over: dict[str, list[str]] = {}
    for r in rows:
        if r["codec"] == "resulic-budget" and r["bpp"] > float(r["setting"].removeprefix("bpp<=")):
            over.setdefault(r["setting"], []).append(f"{r['image']} {r['bpp']:.4f}")
    return [f"resulic-budget {s}: over the budget on {len(v)} images (its lowest rate at its smallest size is larger): "
            + ", ".join(v[:5]) + (" ..." if len(v) > 5 else "") for s, v in sorted(over.items())]  # fmt: skip


def perceptual_plan(metrics, weights_dir: str | None) -> tuple[tuple[str, ...], list[str]]:
    """The perceptual metrics that can be computed, and a note on each that cannot."""
    from pipelines.perceptual import unavailable

    run, notes = [], []
    for m in metrics:
        why = unavailable(m, weights_dir)
        if why is None:
            run.append(m)
        else:
            notes.append(f"{m}: not computed ({why}; it is never computed with random weights)")
    if set(SET_METRICS) & set(run):
        notes.append("fid, kid: over 256-pixel patches of every image of a setting (a grid and the grid shifted "
                     "by half a patch), against the originals' patches; few patches make FID biased upwards")  # fmt: skip
    return tuple(run), notes


def _measured_run(outdir: Path) -> dict:
    """What the measuring run recorded in ``run.json`` (its anchor, machine and time); for older
    runs without one, the anchor of ``bd_rate.csv``."""
    import csv

    if (outdir / "run.json").is_file():
        return json.loads((outdir / "run.json").read_text())
    if (outdir / "bd_rate.csv").is_file():
        with (outdir / "bd_rate.csv").open(newline="") as f:
            return {"anchor": next((b["anchor"] for b in csv.DictReader(f)), None)}
    return {}


def rebuild(dataset: str, outdir: str, anchor: str | None = None, report: str | None = None) -> EvalResult:
    """Summary, BD-rates, plots and report again from ``OUTDIR/per_image.csv`` (no re-measuring)."""
    import csv

    from pipelines.eval_report import write_outputs

    path = Path(outdir) / "per_image.csv"
    with path.open(newline="") as f:
        text = f.read()
    raw = list(csv.DictReader(io.StringIO(text, newline="")))
    # a file cut off mid-write: its last line unended, or a short row (None for its missing fields)
    short = [i for i, r in enumerate(raw, start=2) if None in r or any(v is None for v in r.values()) or not r["bpp"]]
    if short or not text.endswith("\n"):
        raise UsageError(f"{path} is incomplete (line {short[0] if short else len(raw) + 1}): measure again")
    rows = [{k: (v if k in ("image", "codec", "setting") else None if not v else int(float(v)) if k == "bytes" else float(v))
             for k, v in r.items()} for r in raw]  # fmt: skip
    known = {}
    if (Path(outdir) / "summary.csv").is_file():  # set-level metrics cannot be recomputed without features
        with (Path(outdir) / "summary.csv").open() as f:
            known = {(s["codec"], s["setting"]): {k: float(s[k]) for k in SET_METRICS if s.get(k)}
                     for s in csv.DictReader(f)}  # fmt: skip
    summary = summarise(rows, known)
    measured = _measured_run(Path(outdir))
    anchor = anchor or measured.get("anchor")
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    anchor = anchor or ("avif-best" if "avif" in codecs else codecs[0])
    bd = bd_rates(summary, anchor)
    notes = [f"{m}: not computed (no measurement in per_image.csv)" for m in PAIR_METRICS
             if all(r.get(m) is None for r in rows)]  # fmt: skip
    notes += [f"{m}: not computed (summary.csv holds none)" for m in SET_METRICS
              if all(s.get(m) is None for s in summary)]  # fmt: skip
    notes += coverage_notes(rows) + over_budget_notes(rows)
    # the measuring run's machine and time, where it recorded them: this run measured nothing
    env = {"images": len({r["image"] for r in rows}), "dataset": dataset, "anchor": anchor, "rebuilt": True,
           **{k: measured.get(k) for k in ("wall_seconds", "cpus", "machine", "python")}}  # fmt: skip
    write_outputs(Path(outdir), rows, summary, bd, notes, env, Path(report) if report else None)
    return EvalResult(rows, summary, bd, notes)


def evaluate(dataset: str, outdir: str, codecs: list[str] | None = None, rates: list[float] | None = None,
             budgets: list[float] | None = None, metrics: list[str] | None = None, images: int | None = None,
             anchor: str | None = None, captions: str | None = None, progress: bool = True, report: str | None = None,
             metric_weights: str | None = None) -> EvalResult:  # fmt: skip
    from pipelines.eval_report import write_outputs
    from pipelines.perceptual import weights_dir

    if any(b <= 0 for b in budgets or ()):
        raise UsageError(f"budgets must be positive bits per pixel, got {budgets}")
    paths = list_images(dataset, images)
    run, notes = expand_codecs(list(codecs or DEFAULT_CODECS))
    if not run:
        raise UsageError(f"none of the codecs can run here: {'; '.join(notes)}")
    anchor = _check_plan(run, anchor, rates)
    metrics = list(metrics or (*COMPUTED_METRICS, *PERCEPTUAL_METRICS))
    unknown = set(metrics) - set(COMPUTED_METRICS) - set(PERCEPTUAL_METRICS)
    if unknown:
        raise UsageError(f"unknown metrics: {', '.join(sorted(unknown))}")
    perceptual, more = perceptual_plan([m for m in metrics if m in PERCEPTUAL_METRICS], metric_weights)
    notes += more
    cap = {}
    if captions:  # a JSON list of {"image_index": stem, "original_caption": ...}, like Kodak's captions_40.json
        items = json.loads(Path(captions).read_text())
        cap = {it["image_index"]: it["original_caption"] for it in items if isinstance(it, dict) and "image_index" in it}
    options = EvalOptions(tuple(rates or DEFAULT_RATES), tuple(budgets or DEFAULT_BUDGETS), cap,
                          str(weights_dir(metric_weights)), perceptual)  # fmt: skip
    t0 = time.time()
    rows, failed = run_all(paths, run, options, progress)
    if not rows:
        raise EvalError(f"every task failed; the first: {failed[0]}")
    summary = summarise(rows)
    notes += failed + coverage_notes(rows) + over_budget_notes(rows)
    try:
        bd = bd_rates(summary, anchor)
    except UsageError:  # the anchor was checked before measuring: its tasks failed
        bd = []
        notes.append(f"BD-rates: not computed (the anchor {anchor} has no measurements)")
    env = {"images": len(paths), "dataset": dataset, "wall_seconds": round(time.time() - t0, 1), "anchor": anchor,
           "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}  # fmt: skip
    write_outputs(Path(outdir), rows, summary, bd, notes, env, Path(report) if report else None)
    return EvalResult(rows, summary, bd, notes, failed)
