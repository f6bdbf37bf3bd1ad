"""`resulic eval` on a few small real photos: the CSV columns, real plots, BD-rates (on LPIPS and
DISTS too, from the published weights), not-computed metrics."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation.baselines import Classical, available
from pipelines.evaluate import bd_rates, evaluate, expand_codecs, summarise
from tests.conftest import photo

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ds")
    for i, name in enumerate(["kodim03.png", "kodim23.png"]):
        photo(192, 128, name).save(d / f"img{i}.png")
    return d


def read(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_classical_codecs_round_trip_at_each_scale():
    img = photo(128, 96)
    for fmt in ("jpeg", "webp", "avif", "jxl"):
        assert available(fmt)
        for scale in (1, 2, 4):
            c = Classical(fmt, scale)
            out = c.decode(c.encode(img, 30), img.size)
            assert out.size == img.size
    assert Classical("avif", 4).name == "avif-4x"


def test_eval_writes_the_promised_files(dataset, tmp_path):
    out = tmp_path / "out"
    res = evaluate(str(dataset), str(out), codecs=["resulic", "avif", "jpeg"], rates=[0, 4, 9], progress=False,
                   metric_weights=str(tmp_path / "no-weights"))  # fmt: skip
    for name in ("per_image.csv", "summary.csv", "bd_rate.csv", "rd_psnr.png", "rd_ms_ssim.png", "report.md"):
        assert (out / name).stat().st_size > 0, name
    for png in ("rd_psnr.png", "rd_ms_ssim.png"):
        im = Image.open(out / png)
        assert im.size[0] > 300 and len(np.unique(np.asarray(im.convert("L")))) > 10  # a real, non-blank plot
    summary = read(out / "summary.csv")
    assert {"codec", "setting", "bpp", "psnr", "ms_ssim"} <= set(summary[0])
    assert {r["codec"] for r in summary} == {"resulic", "avif", "avif-2x", "avif-4x", "jpeg", "jpeg-2x", "jpeg-4x"}
    assert len([r for r in summary if r["codec"] == "resulic"]) == 3
    per = read(out / "per_image.csv")
    assert len(per) == 2 * (3 + 3 * 6 * 2) and all(float(r["bpp"]) > 0 for r in per)
    assert all(r["lpips"] == "" and r["dists"] == "" for r in per)  # never computed without weights
    assert all(r["fid"] == "" and r["kid"] == "" for r in summary)
    bd = read(out / "bd_rate.csv")
    assert set(bd[0]) == {"codec", "anchor", "metric", "bd_rate_percent"} and bd[0]["anchor"] == "avif-best"
    assert {"jpeg-best", "avif"} <= {b["codec"] for b in bd}
    assert {b["metric"] for b in bd} == {"psnr", "ms_ssim"}  # no BD-rate on what was not measured
    assert not (out / "rd_lpips.png").exists()
    report = (out / "report.md").read_text()
    assert "lpips: not computed (no LPIPS weights in" in report and "| resulic | rate=0 |" in report
    assert any("not computed" in n for n in res.notes)


def test_budget_codec_keeps_every_image_within_each_budget(dataset, tmp_path):
    budgets = [0.03, 0.1]  # 0.03: below full size's lowest rate (0.035), so met at a smaller size
    evaluate(str(dataset), str(tmp_path / "o"), codecs=["resulic-budget"], budgets=budgets, metrics=["psnr"],
             progress=False)  # fmt: skip
    per = read(tmp_path / "o" / "per_image.csv")
    assert sorted({r["setting"] for r in per}) == ["bpp<=0.03", "bpp<=0.1"]
    by = {(r["image"], r["setting"]): float(r["bpp"]) for r in per}
    for image in ("img0", "img1"):
        low, high = by[(image, "bpp<=0.03")], by[(image, "bpp<=0.1")]
        assert 0 < low <= 0.03 and low < high <= 0.1  # each image within its budget, more bits for more budget
    with pytest.raises(ValueError, match="budgets must be positive"):
        evaluate(str(dataset), str(tmp_path / "p"), codecs=["resulic-budget"], budgets=[0.0], progress=False)


def test_bd_rates_from_summaries_match_a_hand_computed_case():
    rows = []
    for codec, factor in (("a", 1.0), ("b", 0.5)):
        for bpp, q in ((0.01, 20.0), (0.02, 23.0), (0.05, 26.0), (0.1, 28.0)):
            rows.append({"image": "x", "codec": codec, "setting": str(bpp), "bpp": bpp * factor, "psnr": q,
                         "ms_ssim": q / 30, "hf_ratio": 1.0, "encode_s": 1.0, "decode_s": 1.0, "encode_mpix_s": 1.0,
                         "decode_mpix_s": 1.0, "peak_rss_mib": 1.0})  # fmt: skip
    bd = bd_rates(summarise(rows), "a")
    assert [(b["codec"], b["metric"]) for b in bd] == [("b", "psnr"), ("b", "ms_ssim")]  # no front: one scale each
    assert all(abs(b["bd_rate_percent"] - (-50.0)) < 1e-9 for b in bd)  # half the bits at every quality


def test_a_rerun_leaves_no_plot_of_a_metric_it_did_not_measure(tmp_path):
    from pipelines.eval_report import write_outputs

    def rows(lpips: bool) -> list[dict]:
        return [{"image": "x", "codec": "a", "setting": str(bpp), "bpp": bpp, "psnr": 20 + bpp * 100,
                 "ms_ssim": 0.9, "lpips": 0.5 - bpp if lpips else None} for bpp in (0.01, 0.02, 0.05)]  # fmt: skip

    env = {"dataset": "d", "images": 1, "cpus": 2, "machine": "m", "python": "3", "wall_seconds": 1.0}
    for lpips in (True, False):
        summary = summarise(rows(lpips))
        write_outputs(tmp_path, rows(lpips), summary, bd_rates(summary, "a"), [], env)
        assert (tmp_path / "rd_lpips.png").exists() == lpips and (tmp_path / "rd_psnr.png").exists()
        assert ("rd_lpips.png" in (tmp_path / "report.md").read_text()) == lpips


def test_unknown_codec_and_unavailable_ones():
    with pytest.raises(ValueError, match="unknown codec"):
        expand_codecs(["h266"])
    from codec.presets import load_preset

    run, notes = expand_codecs(["resulic-cdm"])
    if load_preset().cdm is None:
        assert run == [] and "no CDM" in notes[0]
    else:
        assert run == ["resulic-cdm"] and not notes


def test_refined_codecs_are_left_out_with_a_note_when_the_model_refuses_refinement():
    """The default (perceptual) model refuses --refine: eval says so instead of stopping the run."""
    from codec.latent_refine import refusal
    from codec.presets import load_preset

    assert refusal(load_preset().latent_codec)  # the default model is a conv model
    run, notes = expand_codecs(["resulic", "resulic-refined", "resulic-refined-scaled"])
    assert run == ["resulic"]
    assert [n.split(":")[0] for n in notes] == ["resulic-refined", "resulic-refined-scaled"]
    assert all("--refine is not available" in n for n in notes)


def test_cli(dataset, tmp_path):
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "eval", str(dataset), str(tmp_path / "o"), "--codecs",
                          "webp", "--images", "1", "--metrics", "psnr", "ms_ssim", "lpips", "--report",
                          str(tmp_path / "docs" / "results.md"), "--metric-weights", str(tmp_path / "none")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "note: lpips: not computed" in res.stdout
    assert len(read(tmp_path / "o" / "per_image.csv")) == 3 * 6
    assert "](../o/rd_psnr.png)" in (tmp_path / "docs" / "results.md").read_text()
    before = read(tmp_path / "o" / "summary.csv")
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "eval", str(dataset), str(tmp_path / "o"), "--from-csv"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert read(tmp_path / "o" / "summary.csv") == before  # the same means, rebuilt without measuring


def test_eval_reports_lpips_and_dists_with_bd_rates(metric_weights, tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    for i, name in enumerate(["kodim03.png", "kodim23.png"]):
        photo(96, 64, name).save(ds / f"img{i}.png")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "eval", str(ds), str(out), "--codecs", "avif", "webp",
                          "--metrics", "psnr", "ms_ssim", "lpips", "dists", "--metric-weights", str(metric_weights)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "not computed" not in res.stdout
    per = read(out / "per_image.csv")
    assert len(per) == 2 * 2 * 3 * 6 and all(0 < float(r["lpips"]) < 1 and 0 < float(r["dists"]) < 1 for r in per)
    avif = sorted((float(r["bpp"]), float(r["lpips"]), float(r["dists"])) for r in per if r["codec"] == "avif" and r["image"] == "img0")
    assert avif[-1][1] < avif[0][1] and avif[-1][2] < avif[0][2]  # more bits, closer
    bd = read(out / "bd_rate.csv")
    by = {(b["codec"], b["metric"]): b["bd_rate_percent"] for b in bd}
    assert [b["metric"] for b in bd if b["codec"] == "webp-best"] == ["psnr", "ms_ssim", "lpips", "dists"]
    assert by[("webp-best", "lpips")] and by[("webp-best", "dists")]  # measured over a shared range
    for png in ("rd_lpips.png", "rd_dists.png"):
        assert (out / png).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "](rd_lpips.png)" in report and "| webp-best | avif-best | dists |" in report
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "eval", str(ds), str(out), "--from-csv"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert read(out / "bd_rate.csv") == bd  # the same BD-rates from the CSV alone


def test_eval_runs_as_ray_tasks_when_a_cluster_is_attached(ray_local, dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # Ray is already up in this process: the tasks go to it
    res = evaluate(str(dataset), str(tmp_path / "o"), codecs=["webp", "resulic"], rates=[1], progress=False)
    assert len(res.rows) == 2 * (3 * 6 + 1)
    assert {r["image"] for r in res.rows} == {"img0", "img1"}


def test_a_crashed_ray_worker_costs_its_own_task_only(ray_local, dataset, monkeypatch):
    """A task whose worker dies (out of memory, a crash inside a codec library) is a failed task,
    not the end of the run."""
    import os

    import pipelines.evaluate as ev

    real = ev._task

    def crashing(path, codec, options):
        if path.endswith("img1.png"):
            os._exit(1)
        return real(path, codec, options)

    crashing.__module__ = "__main__"  # sent to the workers by value, with its crash
    monkeypatch.setattr(ev, "_task", crashing)
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    rows, failed = ev.run_all([str(dataset / "img0.png"), str(dataset / "img1.png")], ["webp"],
                              ev.EvalOptions(perceptual=()), progress=False)  # fmt: skip
    assert {r["image"] for r in rows} == {"img0"} and len(rows) == 6  # its six qualities
    assert len(failed) == 1 and failed[0].startswith("img1.png, webp: failed (") and "Error" in failed[0]


def test_every_task_failing_is_the_runs_failure(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "eval", str(tmp_path / "ds"), str(tmp_path / "o"),
                          "--codecs", "webp", "--metrics", "psnr"], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)  # fmt: skip
    assert res.returncode == 1 and "every task failed; the first: cut.png, webp: failed" in res.stderr, res.stderr


def test_missing_model_weights_stop_the_run_before_measuring(dataset, tmp_path, monkeypatch):
    import pipelines.evaluate as ev

    monkeypatch.setattr(ev, "run_all", lambda *a, **k: pytest.fail("measured before checking the weights"))
    monkeypatch.setenv("RESULIC_TAEF2_DIR", str(tmp_path / "none"))  # part of the preset cache's key
    with pytest.raises(FileNotFoundError, match="TAEF2 weights not found"):
        evaluate(str(dataset), str(tmp_path / "o"), codecs=["resulic", "jpeg"], metrics=["psnr"], progress=False)


def test_one_bad_image_costs_its_own_rows_only(dataset, tmp_path):
    """A cut-off file among good ones: the others are measured and written, the failure named,
    and the CLI exits 1."""
    d = tmp_path / "ds"
    d.mkdir()
    for p in dataset.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    (d / "cut.png").write_bytes((dataset / "img0.png").read_bytes()[:300])
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "eval", str(d), str(tmp_path / "o"), "--codecs", "webp",
                          "--metrics", "psnr"], capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert re.search(r"note: cut.png, webp: failed \(ImageError: \S*cut.png: truncated image", res.stdout)
    per = read(tmp_path / "o" / "per_image.csv")
    assert {r["image"] for r in per} == {"img0", "img1"} and len(per) == 2 * 3 * 6
    assert "cut.png, webp: failed" in (tmp_path / "o" / "report.md").read_text()


def test_a_plan_that_cannot_run_fails_before_measuring(dataset, tmp_path, monkeypatch):
    import pipelines.evaluate as ev

    monkeypatch.setattr(ev, "run_all", lambda *a, **k: pytest.fail("measured before checking the plan"))
    with pytest.raises(ValueError, match="anchor 'avif-bset' is not one of the codecs run"):
        evaluate(str(dataset), str(tmp_path / "a"), codecs=["avif"], anchor="avif-bset", progress=False)
    with pytest.raises(ValueError, match="rate 12 is outside"):
        evaluate(str(dataset), str(tmp_path / "r"), codecs=["webp", "resulic"], rates=[0, 12], progress=False)
    with pytest.raises(ValueError, match="none of the codecs can run here"):
        evaluate(str(dataset), str(tmp_path / "n"), codecs=["resulic-refined"], progress=False)
    with pytest.raises(ValueError, match="--images must be a positive"):
        evaluate(str(dataset), str(tmp_path / "i"), codecs=["webp"], images=-1, progress=False)
    (tmp_path / "twins").mkdir()
    photo(64, 64).save(tmp_path / "twins" / "a.png")
    photo(64, 64).save(tmp_path / "twins" / "a.jpg")
    with pytest.raises(ValueError, match="share one: a.jpg, a.png"):
        evaluate(str(tmp_path / "twins"), str(tmp_path / "t"), codecs=["webp"], progress=False)


def test_eval_reads_images_as_compress_does(tmp_path):
    """A 16-bit grayscale PNG is its image, not a white one (PIL's convert clips it)."""
    from codec.images import load_image

    gray = np.asarray(photo(128, 96).convert("L"), dtype=np.uint16) * 257
    (tmp_path / "ds").mkdir()
    Image.fromarray(gray).save(tmp_path / "ds" / "g16.png")
    assert Image.open(tmp_path / "ds" / "g16.png").mode.startswith("I")
    res = evaluate(str(tmp_path / "ds"), str(tmp_path / "o"), codecs=["webp"], metrics=["psnr"], progress=False)
    ref = np.asarray(load_image(tmp_path / "ds" / "g16.png"))
    assert 60 < ref.mean() < 200  # the photo's own grays
    assert all(r["psnr"] < 60 for r in res.rows)  # measured against them, not against a lossless white


def test_classical_sizes_exclude_the_sources_metadata():
    img = photo(128, 96)
    tagged = img.copy()
    tagged.info["icc_profile"] = b"\0" * 3000  # a camera's profile rides in .info
    tagged.info["comment"] = b"x" * 2000
    for fmt in ("avif", "jpeg"):
        assert len(Classical(fmt, 2).encode(tagged, 30)) == len(Classical(fmt, 2).encode(img, 30)), fmt
        assert len(Classical(fmt, 1).encode(tagged, 30)) == len(Classical(fmt, 1).encode(img, 30)), fmt


def test_budget_rows_over_their_budget_are_noted():
    rows = [{"image": "x", "codec": "resulic-budget", "setting": "bpp<=0.0005", "bpp": 0.024},
            {"image": "y", "codec": "resulic-budget", "setting": "bpp<=0.05", "bpp": 0.04}]  # fmt: skip
    from pipelines.evaluate import over_budget_notes

    want = "resulic-budget bpp<=0.0005: over the budget on 1 images (its lowest rate at its smallest size is larger)"
    assert over_budget_notes(rows) == [f"{want}: x 0.0240"]


def test_rebuild_refuses_a_cut_csv_and_keeps_the_runs_anchor(dataset, tmp_path):
    from pipelines.evaluate import rebuild

    out = tmp_path / "o"
    evaluate(str(dataset), str(out), codecs=["webp", "jpeg"], metrics=["psnr"], progress=False)
    assert {b["anchor"] for b in read(out / "bd_rate.csv")} == {"webp"}
    measured = (out / "per_image.csv").read_text()
    took = re.search(r"; measured in [0-9.]+ s;", (out / "report.md").read_text()).group(0)
    rebuild(str(dataset), str(out))
    assert {b["anchor"] for b in read(out / "bd_rate.csv")} == {"webp"}  # not the alphabetically first codec
    assert (out / "per_image.csv").read_text() == measured  # byte counts stay integers
    assert f"{took[:-1]}; rebuilt from per_image.csv;" in (out / "report.md").read_text()  # the measuring run's time
    (out / "bd_rate.csv").write_text("codec,anchor,metric,bd_rate_percent\n")  # the anchor's tasks had failed
    rebuild(str(dataset), str(out))
    assert {b["anchor"] for b in read(out / "bd_rate.csv")} == {"webp"}  # run.json remembers it
    text = (out / "per_image.csv").read_text()
    (out / "per_image.csv").write_text(text[: int(len(text) * 0.6)])
    with pytest.raises(ValueError, match="is incomplete .line [0-9]+.: measure again"):
        rebuild(str(dataset), str(out))
    assert not list(out.glob(".*.tmp"))  # outputs were replaced whole
