"""The real console script, run as a subprocess."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import KODAK, photo

RESULIC = [sys.executable, "-m", "pipelines.cli"]
ROOT = Path(__file__).resolve().parent.parent


def run(*args, check=True, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", **(env or {})}
    res = subprocess.run([*RESULIC, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)  # a Ray job on a loaded 2-core machine can pass 300 s
    if check and res.returncode:
        raise AssertionError(res.stderr)
    return res


def test_encode_info_decode(tmp_path):
    src = tmp_path / "in.png"
    photo(160, 96).save(src)
    stream, out = tmp_path / "x.rsl", tmp_path / "out.png"
    assert "bpp" in run("encode", src, stream, "--rate", "5").stdout
    meta = json.loads(run("info", stream, "--json").stdout)
    assert {"width": 160, "height": 96, "preset": "taef2", "rate": 5.0}.items() <= meta.items()
    assert meta["bytes"] == stream.stat().st_size and meta["bpp"] > 0
    assert set(meta["sections"]) >= {"head", "hyper_latent", "latent"}
    line = run("decode", stream, out, "--reference", src).stdout
    assert "PSNR" in line and "MS-SSIM" in line


def test_outputs_never_destroy_inputs_or_hold_a_part(tmp_path):
    """An output that is an input is refused; a bad --reference or output extension is found
    before anything is written; text too long for a stream is refused, not written."""
    src = tmp_path / "in.png"
    photo(48, 32).save(src)
    before = src.read_bytes()
    res = run("encode", src, src, check=False)
    assert res.returncode == 2 and "the output is the same file as an input" in res.stderr and src.read_bytes() == before
    for flags in (["--rate", "nan"], ["--rate", "inf"], ["--target-bpp", "nan"]):
        res = run("encode", src, tmp_path / "x.rsl", *flags, check=False)
        assert res.returncode == 2 and "must be a finite number" in res.stderr, flags
    res = run("encode", src, tmp_path / "long.rsl", "--text", "q7Z%" * 30000, check=False)
    assert res.returncode == 2 and "a stream holds" in res.stderr and not (tmp_path / "long.rsl").exists()
    run("encode", src, tmp_path / "a.rsl")
    keep = tmp_path / "keep.png"
    keep.write_bytes(before)
    res = run("decode", tmp_path / "a.rsl", keep, "--reference", tmp_path / "missing.png", check=False)
    assert res.returncode == 1 and keep.read_bytes() == before  # the reference failed before the output was written
    res = run("decode", tmp_path / "a.rsl", keep, "--reference", keep, check=False)
    assert res.returncode == 2 and keep.read_bytes() == before
    res = run("decode", tmp_path / "a.rsl", tmp_path / "out.noext", check=False)
    assert res.returncode == 2 and "names no image format" in res.stderr


def test_text_rides_in_its_own_section(tmp_path):
    src, stream = tmp_path / "in.png", tmp_path / "t.rsl"
    photo(96, 64).save(src)
    run("encode", src, stream, "--rate", "1", "--text", "white lighthouse, red boat")
    meta = json.loads(run("info", stream, "--json").stdout)
    assert meta["sections"]["text"] > 6  # tag, length and CRC are counted with the payload
    assert 'text "white lighthouse, red boat"' in run("decode", stream, tmp_path / "o.png").stdout


# The default model has no CDM: the detail gain and refinement flags are checked on the
# patch-transform latent codec with the shipped CDM and decoder (an override: a new model id).
V1 = {"RESULIC_LATENT_CODEC": str(ROOT / "codec/weights/latent_codec_taef2.safetensors"),
      "RESULIC_CDM": str(ROOT / "codec/weights/cdm_taef2_v2"),
      "RESULIC_DECODER": str(ROOT / "codec/weights/decoder_taef2_v1/decoder.safetensors")}  # fmt: skip


@pytest.mark.slow  # three encodes with the older model, about 30 s; the gain's parsing and range: test_settings.py
def test_detail_gain_flag(tmp_path):
    src, stream = tmp_path / "in.png", tmp_path / "x.rsl"
    photo(96, 64).save(src)
    run("encode", src, stream, "--rate", "2", "--detail-gain", "0.5", env=V1)
    assert json.loads(run("info", stream, "--json").stdout)["diffusion"]["detail_gain"] == 0.5
    res = run("encode", src, stream, "--detail-gain", "lots", check=False, env=V1)
    assert res.returncode == 2 and "--detail-gain" in res.stderr and "search, table" in res.stderr
    res = run("encode", src, stream, "--detail-gain", "99", check=False, env=V1)
    assert res.returncode != 0 and "detail gain 99.0 is outside" in res.stderr.strip().splitlines()[-1]


@pytest.mark.slow  # three encodes in subprocesses, about 20 s; refinement itself: test_latent_refine.py
def test_refine_flag(tmp_path):
    src, plain, refined = tmp_path / "in.png", tmp_path / "p.rsl", tmp_path / "r.rsl"
    photo(96, 64).save(src)
    run("encode", src, plain, "--rate", "4", "--detail-gain", "1", env=V1)
    run("encode", src, refined, "--rate", "4", "--detail-gain", "1", "--refine", "3", env=V1)
    assert refined.read_bytes() != plain.read_bytes()
    assert json.loads(run("info", refined, "--json").stdout)["rate"] == 4.0
    res = run("encode", src, refined, "--refine", "-2", check=False)
    assert res.returncode != 0 and "refine_steps must be a whole number >= 0" in res.stderr.strip().splitlines()[-1]


def test_target_bpp_flag(tmp_path):
    stream = tmp_path / "x.rsl"
    import codec

    src = tmp_path / "in.png"
    photo(192, 128).save(src)
    res = run("encode", src, stream, "--target-bpp", "0.1")
    assert codec.info(stream.read_bytes())["bpp"] <= 0.1 and "warning" not in res.stderr
    res = run("encode", src, stream, "--target-bpp", "0.001", "--scale", "1")  # below full size's lowest rate
    assert res.returncode == 0 and "is over --target-bpp 0.001" in res.stderr and "--scale auto" in res.stderr
    res = run("encode", src, stream, "--target-bpp", "0.001")  # auto, a target's default: smaller, still over
    assert codec.info(stream.read_bytes())["scale"] == 4 and "at the smallest coded size" in res.stderr


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("just text"), "not an image"),
        (lambda p: p.write_bytes((KODAK / "kodim01.png").read_bytes()[:5000]), "truncated"),
    ],
)
def test_bad_image_input_one_line_error(tmp_path, make, expect):
    bad = tmp_path / "bad.png"
    make(bad)
    res = run("encode", bad, tmp_path / "o.rsl", check=False)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.png" in lines[0] and expect in lines[0]
    assert not (tmp_path / "o.rsl").exists()


def test_bad_stream_input_one_line_error(tmp_path):
    src = tmp_path / "in.png"
    photo(64, 64).save(src)
    good = tmp_path / "g.rsl"
    run("encode", src, good)
    trunc = tmp_path / "t.rsl"
    trunc.write_bytes(good.read_bytes()[:-5])
    for cmd in (["decode", trunc, tmp_path / "o.png"], ["info", trunc, "--json"]):
        res = run(*cmd, check=False)
        assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1
        assert "t.rsl" in res.stderr and "truncated" in res.stderr
    fifo = tmp_path / "stream.mp4"  # not a stream, and endless: refused on its first bytes, not read whole
    os.mkfifo(fifo)
    for cmd in (["info", fifo], ["decode", fifo, tmp_path / "o.png"]):
        end = os.open(fifo, os.O_RDWR)  # open without blocking; the writer keeps it full
        writer = subprocess.Popen(["yes"], stdout=end, stderr=subprocess.DEVNULL)
        os.close(end)
        try:
            res = subprocess.run([*RESULIC, *map(str, cmd)], capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        finally:
            writer.kill()
            writer.wait()
        assert res.returncode == 1 and "not a resulic bitstream (bad magic)" in res.stderr, res.stderr


def test_weights_dir_flag_reports_missing_weights(tmp_path):
    src = tmp_path / "in.png"
    photo(16, 16).save(src)
    res = run("encode", src, tmp_path / "o.rsl", "--weights-dir", tmp_path / "none", check=False)
    assert res.returncode != 0 and "TAEF2 weights not found" in res.stderr


def test_weights_fetch_from_file_url(tmp_path):
    src = tmp_path / "mirror"
    shutil.copytree(ROOT.parent / "shared" / "weights" / "taef2", src)
    dest = tmp_path / "dest"
    res = run("weights", "fetch", "--dest", dest, "--base-url", src.as_uri())
    assert (dest / "taef2_encoder.pth").exists() and "taef2_decoder.pth" in res.stdout


def test_train_help_lists_trainer_flags(capsys):
    out = run("train", "latent-codec", "--help").stdout  # the installed command, once
    assert "resulic train latent-codec" in out and "--image-window" in out and "--stop-at" in out
    from pipelines.cli import main

    for trainer, flag in (("cdm", "--image-loss-from"), ("decoder", "--ms-ssim-weight"),
                          ("detail-gains", "--budget-db"), ("perceptual-codec", "--freeze-codec")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(["train", trainer, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and f"resulic train {trainer}" in out and flag in out


def test_compress_exit_codes(tmp_path):
    """Exit 0 when some assets fail (they are in the summary), 1 with --fail-on-error, 2 for a
    source that does not exist (found before Ray starts or the archive is created)."""
    src = tmp_path / "src"
    src.mkdir()
    photo(64, 64).save(src / "ok.png")
    (src / "bad.png").write_bytes(b"not a png")
    res = run("compress", src, tmp_path / "arc", "--rate", "1", "--json", "--fail-on-error", check=False)
    summary = json.loads(res.stdout)
    assert res.returncode == 1 and (summary["written"], summary["failed"]) == (1, 1)
    assert res.stderr == ""  # Ray's logs, warnings and C++ messages went to the log file
    assert summary["failures"] == [{"source": f"file://{src}/bad.png", "reason": "not an image (unrecognised format)"}]
    res = run("compress", tmp_path / "missing", tmp_path / "arc2", check=False)
    assert res.returncode == 1 and "source not found" in res.stderr and not (tmp_path / "arc2").exists()
    res = run("compress", src, tmp_path / "arc3", "--max-failure-rate", "2", check=False)  # a usage error
    assert res.returncode == 2 and res.stderr == "resulic: error: --max-failure-rate must lie in [0, 1], not 2.0\n"


def test_exit_status_and_tracebacks(tmp_path, monkeypatch, capsys):
    from codec.bitstream import BitstreamError
    from codec.usage import UsageError
    from pipelines.cli import report_error

    monkeypatch.setenv("RESULIC_LOG_DIR", str(tmp_path))
    assert report_error(UsageError("unknown scale 'x'")) == 2
    assert capsys.readouterr().err == "resulic: error: unknown scale 'x'\n" and not list(tmp_path.iterdir())
    try:
        raise BitstreamError("bitstream is truncated")
    except BitstreamError as e:
        assert report_error(e) == 1
    err = capsys.readouterr().err
    assert err.startswith("resulic: error: bitstream is truncated (traceback: ") and len(err.splitlines()) == 1
    (trace,) = tmp_path.iterdir()
    assert "Traceback" in trace.read_text() and "BitstreamError" in trace.read_text()
    try:
        None.attribute  # noqa: B018 - a bug, as an unexpected error
    except AttributeError as e:
        assert report_error(e) == 3
        assert "resulic: unexpected error: AttributeError:" in capsys.readouterr().err
        assert report_error(e, debug=True) == 3
        assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_log_folder_that_cannot_be_written_loses_no_traceback(tmp_path, monkeypatch, capsys):
    from codec.bitstream import BitstreamError
    from pipelines.cli import report_error

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("RESULIC_LOG_DIR", str(tmp_path / "file" / "logs"))
    try:
        raise BitstreamError("bitstream is truncated")
    except BitstreamError as e:
        assert report_error(e) == 1  # not an error raised while reporting one
    err = capsys.readouterr().err
    assert "Traceback" in err and "it could not be written under $RESULIC_LOG_DIR" in err


def test_counts_and_scales_out_of_range_are_usage_errors(tmp_path):
    """--steps 0 used to mean the default, -1 failed inside the sampler, a nan guidance and a
    negative prompt-optimisation budget were taken."""
    import codec

    src, stream = tmp_path / "in.png", tmp_path / "x.rsl"
    photo(64, 64).save(src)
    run("encode", src, stream, "--rate", "1")
    for flags, why in ((["--steps", "0"], "must be at least 1"), (["--steps", "-1"], "must be at least 1"),
                       (["--guidance", "nan"], "must be a finite number")):  # fmt: skip
        res = run("decode", stream, tmp_path / "o.png", *flags, check=False)
        assert res.returncode == 2 and why in res.stderr, res.stderr
    for flags, why in ((["--pfo-seconds", "-1"], "above 0"), (["--pfo-steps", "-3"], "must be at least 0")):
        res = run("encode", src, tmp_path / "y.rsl", *flags, check=False)
        assert res.returncode == 2 and why in res.stderr, res.stderr
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "y.rsl").exists()
    res = run("decode", stream, tmp_path / "o.png", check=False, env={"RESULIC_TILE_LATENTS": "10"})
    assert res.returncode == 2 and "$RESULIC_TILE_LATENTS must be a whole number" in res.stderr  # before any work
    with pytest.raises(ValueError, match="steps must be a whole number >= 1"):
        codec.decode(stream.read_bytes(), steps=0)
    with pytest.raises(ValueError, match="pfo_seconds must be a positive"):
        codec.encode(photo(64, 64), rate=1, pfo_seconds=-1.0)
