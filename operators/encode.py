"""Encode: a model-holding class for an actor pool. Pixels -> verified bitstream, per row.

Images of one size are encoded together (the autoencoder runs batched). Every stream is then
verified: parsed and entropy-decoded once, and compared with the encoder's own symbols, before
it can reach the archive. An error fails its row only; a failing group is retried one image at
a time so that one bad image never takes its neighbours down.

With ``reconstruct`` (semantic residual coding with a captioning model) the actor also decodes
its own symbols into the latent-only reconstruction (``recon_pixels``) and keeps the original
``pixels`` for the caption stage; otherwise the pixels are dropped here.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import torch
from PIL import Image

from operators.decode import pixels_to_array
from operators.failures import SystemicError, systemic_reason
from operators.sources import _with, forget_sources
from schemas.archive import STATUS_FAILED

if TYPE_CHECKING:
    from codec.settings import EncodeSettings


SECTION_TYPES = {"bits_header": pa.int64(), "bits_hyper": pa.int64(), "bits_latent": pa.int64(),
                 "bits_text": pa.int64(), "bpp": pa.float64()}  # fmt: skip


def section_columns(stream: bytes | None, meta: dict | None = None) -> dict[str, int | float | None]:
    """A stream's size by section in bits, and its bpp (all None without a stream); ``meta`` is
    its ``codec.info`` when the caller already has it."""
    from codec.parsing import info

    if not stream:
        return dict.fromkeys(SECTION_TYPES)
    meta = meta or info(stream)
    sec = meta["sections"]
    # the header's share is everything but the payload sections (magic, framing, CRCs)
    head = len(stream) - sec["hyper_latent"] - sec["latent"] - sec.get("text", 0)
    return {"bits_header": 8 * head, "bits_hyper": 8 * sec["hyper_latent"], "bits_latent": 8 * sec["latent"],
            "bits_text": 8 * sec.get("text", 0), "bpp": meta["bpp"]}  # fmt: skip


def _node_id() -> str | None:
    """The Ray node this actor runs on (the job summary counts assets per node); None outside Ray."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


class Encoder:
    """Holds one preset on ``device`` (``codec.device``). Configuration travels as plain values and the
    encoder's choices as one (picklable) ``EncodeSettings``.

    ``model_id`` is the model the job announced (the archive's metadata, from the driver's
    weights). An actor whose own weights hash to another model (a node with other files, or
    an override the driver set and the node lacks) writes nothing: its first batch stops the
    job, since its streams would name a model the archive's readers may not have."""

    def __init__(
        self,
        preset: str = "taef2",
        settings: EncodeSettings | None = None,
        threads: int | None = None,
        env: dict[str, str] | None = None,
        reconstruct: bool = False,
        device: str = "auto",
        model_id: str | None = None,
    ) -> None:
        os.environ.update(env or {})  # weight paths chosen on the driver
        if threads:
            torch.set_num_threads(threads)
        from codec.presets import load_preset
        from codec.settings import EncodeSettings

        self.preset = load_preset(preset, device=device)  # "auto": the GPU Ray gave this actor, if any
        self.settings, self.reconstruct = settings or EncodeSettings(), reconstruct
        self.node = _node_id()
        own = self.preset.model_id.hex()
        self.mismatch = None if model_id in (None, own) else (
            f"encoder on node {self.node}: its weights are model {own}, the job's {model_id} "
            "(a weights file or RESULIC_* variable differs between this node and the driver)")

    def _encode(self, images: list[Image.Image]) -> list[tuple[bytes, float, float, bytes | None]]:
        from codec.bitstream import Bitstream
        from codec.decoding import reconstruct
        from codec.encoder import encode_with_symbols, verify

        t0 = time.perf_counter()
        pairs = encode_with_symbols(images, self.settings, preset=self.preset)
        t_enc = (time.perf_counter() - t0) / len(images)
        out = []
        for stream, y_hat in pairs:
            t1 = time.perf_counter()
            verify(stream, y_hat, self.preset)
            out.append((stream, t_enc, time.perf_counter() - t1, None))
        if self.reconstruct:
            w, h = images[0].size
            heads = [Bitstream.from_bytes(s).header for s, _ in pairs]
            recon = reconstruct([y for _, y in pairs], [hd.rate_level for hd in heads], w, h, self.preset,
                                [hd.scale for hd in heads])  # fmt: skip
            out = [(s, te, tv, im.tobytes()) for (s, te, tv, _), im in zip(out, recon)]
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        from codec.parsing import info

        if self.mismatch:
            raise SystemicError(self.mismatch)

        rows = batch.select(["status", "error", "pixels", "width", "height"]).to_pylist()
        results: dict[int, tuple[bytes, float, float, bytes | None] | str] = {}
        groups: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(rows):
            if r["status"] is None:
                groups.setdefault((r["width"], r["height"]), []).append(i)
        forget: set[int] = set()  # failed for a reason not the source's own (operators.sources.forget_sources)
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
                        if (why := systemic_reason(e)) is not None:  # not this image's fault: stop the job
                            raise SystemicError(f"encoder: {why}") from e
                        results[i] = f"encode failed: {type(e).__name__}: {e}".split("\n")[0]
                        if isinstance(e, (MemoryError, torch.OutOfMemoryError)):  # this worker's, maybe another task's
                            forget.add(i)
        cols: dict[str, list[Any]] = {k: [] for k in (
            "status", "error", "bitstream", "preset", "model_id", "rate_level", "seconds_encode", "seconds_verify",
            "recon_pixels", "encoder_node", *SECTION_TYPES)}  # fmt: skip
        for i, r in enumerate(rows):
            res = results.get(i)
            stream = res[0] if isinstance(res, tuple) else None
            meta = info(stream) if stream else None
            cols["status"].append(r["status"] if res is None else (STATUS_FAILED if isinstance(res, str) else None))
            cols["error"].append(res if isinstance(res, str) else r["error"])
            cols["bitstream"].append(stream)
            for k, v in section_columns(stream, meta).items():
                cols[k].append(v)
            cols["preset"].append(meta["preset"] if meta else None)
            cols["model_id"].append(meta["model_id"] if meta else None)
            cols["rate_level"].append(meta["rate_level"] if meta else None)
            cols["seconds_encode"].append(res[1] if isinstance(res, tuple) else None)
            cols["seconds_verify"].append(res[2] if isinstance(res, tuple) else None)
            cols["recon_pixels"].append(res[3] if isinstance(res, tuple) else None)
            cols["encoder_node"].append(self.node if res is not None else None)
        types = {"bitstream": pa.large_binary(), "rate_level": pa.int32(), "seconds_encode": pa.float64(),
                 "seconds_verify": pa.float64(), "recon_pixels": pa.large_binary(), **SECTION_TYPES}  # fmt: skip
        if not self.reconstruct:
            cols.pop("recon_pixels")
        out = forget_sources(batch if self.reconstruct else batch.drop_columns(["pixels"]), forget)
        return _with(out, **{k: pa.array(v, types.get(k, pa.string())) for k, v in cols.items()})
