"""Caption: a model-holding class for its own actor pool, so captioning scales apart from encoding.

Per row it captions the original (unless the source already had a caption) and the latent-only
reconstruction the encoder made, in one batched call, and with ``residual="model"`` asks the
same model for the residual (the paper's procedure). Refusals are recorded as such and never
coded. A captioning error fails its row only (the next job retries it); one bad answer never
takes the batch down.
"""

from __future__ import annotations

import os
import time

import pyarrow as pa
from PIL import Image

from codec.semantic.captioners import CaptionConfig, CaptionError, make_captioner
from codec.semantic.captions import clean_caption, is_refusal
from codec.semantic.residual import clean_residual, residual_prompt
from operators.decode import pixels_to_array
from operators.failures import SystemicError, systemic_reason
from operators.sources import _with, forget_sources
from schemas.archive import STATUS_FAILED


class Captioner:
    def __init__(self, config: dict, env: dict[str, str] | None = None) -> None:
        os.environ.update(env or {})
        self.config = CaptionConfig(**config)
        self.backend = make_captioner(self.config)
        if self.backend is None:
            raise ValueError(f"captioner {self.config.backend!r} runs no model: no caption actor needed")

    def _each(self, fn, items: list) -> list[str | CaptionError]:
        """``fn`` over a batch; if the batch fails as a whole, item by item (isolating the culprit)."""
        if not items:
            return []
        try:
            return list(fn(items))
        except Exception:  # noqa: BLE001
            out: list[str | CaptionError] = []
            for item in items:
                try:
                    out.append(fn([item])[0])
                except Exception as e:  # noqa: BLE001
                    if (why := systemic_reason(e)) is not None:
                        raise SystemicError(f"captioning: {why}") from e
                    out.append(CaptionError(f"{type(e).__name__}: {e}".split("\n")[0][:200]))
            return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        rows = batch.select(["status", "error", "caption", "caption_source", "pixels", "recon_pixels", "width", "height"]).to_pylist()
        todo = [i for i, r in enumerate(rows) if r["status"] is None]
        need_original = [i for i in todo if not clean_caption(rows[i]["caption"])]

        def image(i: int, column: str) -> Image.Image:
            r = rows[i]
            return Image.fromarray(pixels_to_array(r[column], r["width"], r["height"]), "RGB")

        answers = self._each(self.backend.caption, [image(i, "pixels") for i in need_original] +
                             [image(i, "recon_pixels") for i in todo])  # fmt: skip
        for a in answers:
            if isinstance(a, CaptionError) and a.systemic:  # every image would fail alike: stop the job
                raise SystemicError(f"captioning: {a}")
        original = dict(zip(need_original, answers[: len(need_original)]))
        recon = dict(zip(todo, answers[len(need_original) :]))
        n = len(rows)
        status, error = [r["status"] for r in rows], [r["error"] for r in rows]
        endpoint_failed: set[int] = set()  # the endpoint's passing trouble: forgotten, so the next job retries it
        cap_orig, cap_recon, source, residual = [None] * n, [None] * n, [r["caption_source"] for r in rows], [None] * n
        for i in todo:
            got = [a for a in (original.get(i), recon[i]) if isinstance(a, CaptionError)]
            if got:
                status[i], error[i] = STATUS_FAILED, f"captioning failed: {got[0]}"
                if any(e.transient for e in got):
                    endpoint_failed.add(i)
                continue
            if i in original:
                cap_orig[i] = clean_caption(original[i])
                source[i] = "model" if cap_orig[i] else "refused" if is_refusal(original[i]) else None
            else:
                cap_orig[i] = clean_caption(rows[i]["caption"])
            cap_recon[i] = clean_caption(recon[i])
        if self.config.residual == "model":
            asks = [i for i in todo if status[i] is None and cap_orig[i] and cap_recon[i]]
            prompts = [residual_prompt(cap_orig[i], cap_recon[i], self.config.max_residual_words) for i in asks]
            for i, answer in zip(asks, self._each(self.backend.complete, prompts)):
                if isinstance(answer, CaptionError):
                    status[i], error[i] = STATUS_FAILED, f"captioning failed: {answer}"
                    if answer.transient:
                        endpoint_failed.add(i)
                else:
                    residual[i] = clean_residual(answer, self.config.max_residual_words)
        seconds = (time.perf_counter() - t0) / max(1, len(todo))
        out = batch.drop_columns(["pixels", "recon_pixels"])
        out = forget_sources(out, endpoint_failed)
        return _with(out, status=status, error=error, caption_source=source, caption_original=cap_orig,
                     caption_reconstruction=cap_recon, residual_text=residual,
                     seconds_caption=pa.array([seconds if i in recon else None for i in range(n)], pa.float64()))  # fmt: skip
