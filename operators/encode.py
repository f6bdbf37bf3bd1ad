"""Encode: a model-holding class for an actor pool. Pixels -> verified bitstream, per row.

Images of one size are encoded together (the autoencoder runs batched). Every stream is then
verified: parsed and entropy-decoded once, and compared with the encoder's own symbols, before
it can reach the archive. An error fails its row only; a failing group is retried one image at
a time so that one bad image never takes its neighbours down.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pyarrow as pa
import torch
from PIL import Image

from operators.decode import pixels_to_array
from operators.sources import _with
from schemas.archive import STATUS_FAILED


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Encoder:
    """Holds one preset on the actor's device. Configuration travels as plain values."""

    def __init__(
        self,
        preset: str = "taef2",
        rate: float | None = None,
        target_bpp: float | None = None,
        threads: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        os.environ.update(env or {})  # weight paths chosen on the driver
        if threads:
            torch.set_num_threads(threads)
        from codec.presets import load_preset

        self.preset = load_preset(preset).to(_device())
        self.rate, self.target_bpp = rate, target_bpp

    def _encode(self, images: list[Image.Image]) -> list[tuple[bytes, float, float]]:
        from codec.api import encode_with_symbols, verify

        t0 = time.perf_counter()
        pairs = encode_with_symbols(images, rate=self.rate, target_bpp=self.target_bpp, preset=self.preset)
        t_enc = (time.perf_counter() - t0) / len(images)
        out = []
        for stream, y_hat in pairs:
            t1 = time.perf_counter()
            verify(stream, y_hat, self.preset)
            out.append((stream, t_enc, time.perf_counter() - t1))
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        from codec.api import info

        rows = batch.select(["status", "error", "pixels", "width", "height"]).to_pylist()
        results: dict[int, tuple[bytes, float, float] | str] = {}
        groups: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(rows):
            if r["status"] is None:
                groups.setdefault((r["width"], r["height"]), []).append(i)
        for (w, h), idx in groups.items():
            images = [Image.fromarray(pixels_to_array(rows[i]["pixels"], w, h), "RGB") for i in idx]
            try:
                for i, res in zip(idx, self._encode(images)):
                    results[i] = res
            except Exception:  # noqa: BLE001 - isolate the culprit below
                for i, im in zip(idx, images):
                    try:
                        results[i] = self._encode([im])[0]
                    except Exception as e:  # noqa: BLE001
                        results[i] = f"encode failed: {type(e).__name__}: {e}".split("\n")[0]
        cols: dict[str, list[Any]] = {k: [] for k in (
            "status", "error", "bitstream", "bits_header", "bits_hyper", "bits_latent", "bits_text", "bpp",
            "preset", "model_id", "rate_level", "seconds_encode", "seconds_verify")}  # fmt: skip
        for i, r in enumerate(rows):
            res = results.get(i)
            stream = res[0] if isinstance(res, tuple) else None
            meta = info(stream) if stream else None
            status = r["status"] if res is None else (STATUS_FAILED if isinstance(res, str) else None)
            sections = meta["sections"] if meta else {}
            cols["status"].append(status)
            cols["error"].append(res if isinstance(res, str) else r["error"])
            cols["bitstream"].append(stream)
            # the header's share is everything but the payload sections (magic, framing, CRCs)
            head = len(stream) - sections["hyper_latent"] - sections["latent"] - sections.get("text", 0) if meta else 0
            cols["bits_header"].append(8 * head if meta else None)
            cols["bits_hyper"].append(8 * sections["hyper_latent"] if meta else None)
            cols["bits_latent"].append(8 * sections["latent"] if meta else None)
            cols["bits_text"].append(8 * sections.get("text", 0) if meta else None)
            cols["bpp"].append(meta["bpp"] if meta else None)
            cols["preset"].append(meta["preset"] if meta else None)
            cols["model_id"].append(meta["model_id"] if meta else None)
            cols["rate_level"].append(meta["rate_level"] if meta else None)
            cols["seconds_encode"].append(res[1] if isinstance(res, tuple) else None)
            cols["seconds_verify"].append(res[2] if isinstance(res, tuple) else None)
        types = {"bitstream": pa.large_binary(), "rate_level": pa.int32(), "bpp": pa.float64(),
                 "seconds_encode": pa.float64(), "seconds_verify": pa.float64(),
                 **{k: pa.int64() for k in ("bits_header", "bits_hyper", "bits_latent", "bits_text")}}  # fmt: skip
        out = batch.drop_columns(["pixels"])
        return _with(out, **{k: pa.array(v, types.get(k, pa.string())) for k, v in cols.items()})
