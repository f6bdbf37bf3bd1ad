"""The benchmark scripts run against the shipped model (on one Kodak image, or synthetic data) and print sane tables.

Scripts are not imported by the package, so a changed internal API breaks them silently
(kodak_rd.py did, session 12): these runs catch that.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import KODAK, ROOT


def run(script: str, *args: str) -> str:
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def table(out: str) -> dict[str, list[str]]:
    """Markdown table rows of ``out``, by their first cell."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]
    return {r[0]: r[1:] for r in rows}


@pytest.mark.slow  # the older model's ceiling: about 20 s
def test_latent_ceiling_orders_its_reconstructions():
    assert (KODAK / "kodim01.png").exists()
    rows = table(run("latent_ceiling.py", "--images", "1", "--threads", "2"))
    db = {name: float(cells[1]) for name, cells in rows.items() if name != "reconstruction"}
    taef2, ceiling = db["taef2"], db["codec, y unquantised, plain decoder"]
    top = db["codec, top level (plain decode)"]
    # unlimited bits keep more than the top rate's stream, and the codec's transforms less than TAEF2
    assert top < ceiling < taef2
    assert db["rank-128 projection (oracle PCA), TAEF2 decoder"] < db["rank-256 projection (oracle PCA), TAEF2 decoder"]
    assert db["rank-256 projection (oracle PCA), TAEF2 decoder"] < db["rank-384 projection (oracle PCA), TAEF2 decoder"]
    assert 0 < float(rows["codec, top level (plain decode)"][0]) < 1  # its bpp


def test_kodak_rd_prints_rate_points_and_times():
    out = run("kodak_rd.py", "--images", "1", "--rates", "0", "8", "--no-avif")
    taef2 = re.search(r"TAEF2 alone: encode ([\d.]+) s, decode ([\d.]+) s", out)
    assert taef2 and float(taef2[1]) > 0 and float(taef2[2]) > 0
    points = re.findall(r"resulic\s+rate (\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out)
    assert [p[0] for p in points] == ["0", "8"]
    (_, bpp0, psnr0, *_), (_, bpp8, psnr8, *_) = points
    assert float(bpp0) < float(bpp8) and float(psnr0) < float(psnr8)


@pytest.mark.slow  # about 20 s
def test_speed_prints_the_ratio_to_the_autoencoder():
    out = run("speed.py", str(KODAK), "--images", "1", "--repeats", "1")
    (cells,) = [c for name, c in table(out).items() if name.endswith(".png")]
    ae_enc, enc, ratio = (float(c) for c in cells[1:4])
    # encoding includes the autoencoder, but one run of each is timed: near 1x, noise can invert them
    assert 0 < ae_enc < 1.5 * enc and abs(ratio - enc / ae_enc) < 0.02
    assert re.search(r"mean ratio to the autoencoder: encode [\d.]+x, decode [\d.]+x", out)


@pytest.mark.slow  # about 16 s
def test_gpu_benchmark_runs_on_the_cpu_and_says_what_is_pending():
    out = run("gpu.py", str(KODAK), "--images", "2", "--batch", "2")
    rows = table(out)
    assert float(rows["cpu"][0]) > 0 and float(rows["cpu"][1]) > 0
    import torch

    if torch.cuda.is_available():
        assert rows["cuda"][0] != "pending" and "NO" not in out
    else:
        assert rows["cuda"][0].startswith("pending")


def test_restore_latency_builds_archives_and_restores_from_each():
    out = run("restore_latency.py", "--rows", "300", "5000", "--lookups", "2")
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert [(r[0], r[1]) for r in rows] == [("300", "1"), ("5000", "2")]  # files of 4,096 rows
    assert all(0 < float(r[2]) < float(r[3]) for r in rows) and rows[0][4] == "1.00"


def test_gpu_checks_script_is_valid_bash_and_names_existing_scripts():
    script = (ROOT / "benchmarks" / "gpu_checks.sh").read_text()
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_checks.sh")], check=True)
    for name in re.findall(r"(benchmarks/\w+\.py|tests/\w+\.py)", script):
        assert (ROOT / name).is_file(), name


def test_sd21_latency_times_the_diffusion_decoder():
    out = run("sd21_latency.py", "--tiny", "--size", "64", "--repeats", "1", "--dtype", "fp32", "--device", "cpu")
    row = re.search(r"^\| cpu \| fp32 \| 64 \| 4 \| 8 \| ([\d.]+) \| ([\d.]+) \|$", out, re.M)
    assert row and float(row.group(1)) > 0, out


@pytest.mark.slow  # a service and a load run: about 45 s
def test_serve_load_serves_every_request_and_measures_the_cli(tmp_path):
    out = run("serve_load.py", "--assets", "4", "--size", "96", "--requests", "16", "--concurrency", "2",
              "--cli-keys", "1", "--workdir", str(tmp_path), "--json")
    r = __import__("json").loads(out)
    (level,) = r["levels"]
    assert r["assets"] == 4 and level["requests"] == 16 and level["errors"] == 0
    assert 0 < level["misses"] < 16 and level["hit_p95_ms"] > 0  # repeated keys came from the cache
    assert r["cli"]["keys"] == 1 and r["cli"]["mean_s"] > 0 and level["x_cli"] > 0


@pytest.mark.slow
def test_soak_in_miniature_keeps_every_asset_once():
    out = run("soak.py", "--photos", "60", "--kills", "1", "--kill-between", "4", "8", "--nights", "2", "--new", "0.1",
              "--broken", "0.05")  # fmt: skip
    assert out.count("ok   ") == 4 and "FAIL" not in out


def test_decoder_compare_scores_each_decoder_and_model_like_the_release(metric_weights, tmp_path):
    from codec.cdm.model import CDMConfig, CDMDenoiser

    folder = "codec/weights/perceptual_v2"  # the newest release's own files, as a training run exports them
    # an untrained CDM through the release's decoder restores ẑ itself: it must score as the plain decode
    CDMDenoiser(CDMConfig(block_out_channels=(32, 32), norm_num_groups=8, decoder="plain")).save_pretrained(tmp_path)
    out = run("decoder_compare.py", str(KODAK), "--images", "1", "--max-side", "256", "--rates", "0",
              "--decoder", "release", "--decoder", f"same={folder}/decoder.safetensors", "--model", f"model={folder}",
              "--cdm", f"untrained={tmp_path}", "--metric-weights", str(metric_weights))  # fmt: skip
    rows = table(out)
    own, same, model = rows["release"][1:], rows["same"][1:], rows["model"][1:]
    assert own == same == model  # the same files, whether as a decoder or as a whole model: the same figures
    bpp, psnr, lpips, dists = (float(c) for c in own)
    assert 0 < bpp < 0.05 and psnr > 15 and 0 < lpips < 1 and 0 < dists < 1
    cdm = [float(c) for c in rows["untrained"][1:]]
    assert 0 <= cdm[0] - bpp < 0.002 and abs(cdm[1] - psnr) < 0.05  # the same symbols, a CDM's head fields
    assert abs(cdm[2] - lpips) < 0.002 and abs(cdm[3] - dists) < 0.002


@pytest.mark.slow  # two full Kodak encodes and DISTS
def test_scales_prints_each_coded_size_with_perceptual_metrics(metric_weights):
    out = run("scales.py", str(KODAK), "--images", "1", "--scales", "1", "2", "--rates", "0",
              "--perceptual", "--metric-weights", str(metric_weights))  # fmt: skip
    rows = table(out)  # one rate: a row per scale
    full, half = rows["1"][1:], rows["2"][1:]
    assert float(half[0]) < float(full[0])  # a half-size image costs fewer bits at the same rate
    assert all(0 < float(v) < 1 for v in full[3:] + half[3:])  # LPIPS and DISTS


@pytest.mark.slow  # about 30 s
def test_refine_perceptual_compares_each_weight_at_each_budget(metric_weights):
    photos = ROOT.parent / "shared" / "datasets" / "photos-train"
    out = run("refine_perceptual.py", str(photos), "--images", "1", "--targets", "0.06", "--lpips-weight", "0.05",
              "--steps", "2", "--max-side", "256", "--metric-weights", str(metric_weights))  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| none |") or line.startswith("| w=0.05 |")]
    assert len(rows) == 2, out
    for row in rows:
        _, target, bpp, db, lpips, dists, _ = (c.strip() for c in row.strip("|").split("|"))
        assert float(bpp) <= float(target) and float(db) > 10 and 0 < float(lpips) < 1 and 0 < float(dists) < 1


def test_low_rate_points_sets_full_size_below_rate_0_beside_smaller_images(metric_weights):
    photos = ROOT.parent / "shared" / "datasets" / "photos-train"
    out = run("low_rate_points.py", str(photos), "--images", "1", "--max-side", "256", "--below", "-2",
              "--full-rates", "0", "--scaled-rates", "0", "--metric-weights", str(metric_weights))  # fmt: skip
    rows = {k: [float(c) for c in v] for k, v in table(out).items() if k != "coding"}
    assert set(rows) == {"full r=-2", "full r=0", "1/2 r=0", "1/4 r=0"}, out
    bpp = {k: v[0] for k, v in rows.items()}
    assert bpp["full r=-2"] < bpp["full r=0"] and bpp["1/4 r=0"] < bpp["1/2 r=0"] < bpp["full r=0"]
    assert all(v[1] > 10 and 0 < v[2] < 1 and 0 < v[3] < 1 for v in rows.values())  # PSNR, LPIPS, DISTS


@pytest.mark.slow  # about 15 s: keeps the default run under 20 minutes
def test_zhat_grid_measures_the_grid_and_the_notch_removes_it(metric_weights):
    photos = ROOT.parent / "shared" / "datasets" / "photos-train"
    out = run("zhat_grid.py", str(photos), "--images", "1", "--max-side", "256", "--rates", "0", "--notch",
              "--metric-weights", str(metric_weights))  # fmt: skip
    rows = table(out)
    bpp, zhat, own, notched, restored = (float(c) for c in rows["0"])
    assert 0 < bpp < 0.1 and all(0 <= v <= 1 for v in (zhat, own, restored))
    assert notched < 1e-4  # ẑ less its grid has none left
    for decode in ("plain", "notch"):
        db, lpips, dists = (float(c) for c in rows[decode][1:])
        assert db > 10 and 0 < lpips < 1 and 0 < dists < 1


def test_grid_recovers_a_fixed_phase_pattern_under_noise():
    import torch

    from benchmarks.zhat_grid import grid, grid_share

    torch.manual_seed(0)
    pattern = torch.randn(1, 2, 4, 4)
    pattern -= pattern.mean((2, 3), keepdim=True)
    pattern /= pattern.pow(2).mean((2, 3), keepdim=True).sqrt()  # energy 1, as the noise's
    noise = torch.randn(1, 2, 64, 60)
    t = pattern.repeat(1, 1, 16, 15) + noise
    assert torch.allclose(grid(t, 4)[..., :4, :4], pattern, atol=0.3)  # 240 samples a phase: sd 0.065
    assert grid_share(noise, 4) < 0.01  # chance: 16/3840
    assert grid_share(t, 4) > 0.4  # half the energy is the pattern's
