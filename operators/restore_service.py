"""The restore service: Ray Serve deployments that restore archived assets over HTTP.

Two deployments, so that each scales on its own: ``RestoreAPI`` is the ingress (routes,
authentication, the in-memory index, a cache of encoded responses; CPU only) and
``AssetDecoder`` holds the models (on a GPU when it has one) and decodes the requests of
concurrent callers together (``serve.batch``). Keys are only ever looked up in the index: no
path built from a key touches storage.
"""


import asyncio
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from codec.bitstream import Bitstream, BitstreamError, PixelLimitError
from operators.archive import Archive
from operators.asset_index import MAX_PAGE, AssetIndex
from operators.formats import too_large_for
from operators.response_cache import CachedResponse, ResponseCache
from schemas.archive import STATUS_WRITTEN

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
DECODERS = ("auto", "cdm", "plain")  # codec.decoding.DECODERS, without importing torch here
BATCH_SIZE = 8  # decodes of one decoder replica batched together
BATCH_PIXELS = 8_000_000  # output pixels of one decode pass (about 40 B each): bigger images pass alone
# Clients keep a restoration but ask again each time (If-None-Match: a 304 costs no decode):
# a key archived again restores to new pixels under a new ETag.
CACHE_CONTROL = "private, no-cache"


def etag_of(stream: bytes, fmt: str, decoder: str, steps: int | None = None) -> str:
    """A restoration's ETag: the stream's SHA-256 (decoding is deterministic) with how it is
    rendered, the service's CDM step count included (another count gives other pixels)."""
    return f'"{hashlib.sha256(stream).hexdigest()[:32]}-{fmt}-{decoder}{f"-s{steps}" if steps else ""}"'


def matches(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header matches ``etag`` (RFC 9110 §13.1.2: ``*``, a list,
    weak comparison, so that a ``W/`` a proxy added still matches)."""
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")} - {""}
    return "*" in tags or etag in tags


@dataclass(frozen=True)
class DecodeJob:
    stream: bytes
    fmt: str
    decoder: str


@dataclass(frozen=True)
class DecodeResult:
    outcome: str  # ok | damaged (BitstreamError) | too_large (over the pixel cap) | refused (a decoder the model lacks) | error
    body: bytes = b""
    message: str = ""


def _pixels(stream: bytes) -> int:
    """The restoration's pixel count from the stream's header (0 when it cannot be read: its
    decode then fails on its own)."""
    try:
        head = Bitstream.from_bytes(stream).header
    except Exception:  # noqa: BLE001 - a damaged stream is the decode's to report
        return 0
    return head.width * head.height


def pixel_chunks(pixels: list[int], budget: int) -> list[list[int]]:
    """Positions of ``pixels`` in order, cut into decode passes of at most ``budget`` pixels
    together (an image over it alone): memory grows with the pixels of a pass, not its count."""
    chunks: list[list[int]] = []
    total = budget + 1
    for i, n in enumerate(pixels):
        if total + n > budget:
            chunks.append([])
            total = 0
        chunks[-1].append(i)
        total += n
    return chunks


@serve.deployment(max_ongoing_requests=2 * BATCH_SIZE, max_queued_requests=256, graceful_shutdown_timeout_s=5)
class AssetDecoder:
    """Holds the models; decodes a batch of concurrent requests in one pass per decoder kind."""

    def __init__(self, env: dict[str, str], max_pixels: int, device: str = "auto", steps: int | None = None,
                 threads: int | None = None) -> None:  # fmt: skip
        os.environ.update(env)
        import torch

        from codec.device import resolve_device
        from codec.presets import load_preset

        if threads:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.kwargs: dict[str, Any] = {"device": self.device, "max_pixels": max_pixels}
        if steps:
            self.kwargs["steps"] = steps
        # the default model loaded, and run once (the CDM too), before the first request
        import codec
        from PIL import Image

        preset = load_preset(device=self.device)
        codec.decode(codec.encode(Image.new("RGB", (64, 64), (128, 128, 128)), rate=0, preset=preset), **self.kwargs)

    @serve.batch(max_batch_size=BATCH_SIZE, batch_wait_timeout_s=0.01)
    async def decode(self, jobs: list[DecodeJob]) -> list[DecodeResult]:
        # in a thread: the event loop keeps taking requests, which form the next batch
        return await asyncio.to_thread(self._decode, jobs)

    def _decode(self, jobs: list[DecodeJob]) -> list[DecodeResult]:
        import codec

        groups: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.decoder, []).append(i)
        results: list[DecodeResult] = [DecodeResult("error")] * len(jobs)
        passes = [(decoder, [idx[k] for k in chunk]) for decoder, idx in groups.items()
                  for chunk in pixel_chunks([_pixels(jobs[i].stream) for i in idx], BATCH_PIXELS)]  # fmt: skip
        for decoder, idx in passes:
            try:
                images = codec.decode_batch([jobs[i].stream for i in idx], decoder=decoder, **self.kwargs)
            except Exception:  # noqa: BLE001 - one bad stream: decode them one by one to find whose
                images = [None] * len(idx)
            for image, i in zip(images, idx):
                results[i] = self._finish(jobs[i], image)
        return results

    def _finish(self, job: DecodeJob, image: Any) -> DecodeResult:
        import codec
        from codec.usage import UsageError
        from operators.formats import encode_image

        try:
            if image is None:
                image = codec.decode(job.stream, decoder=job.decoder, **self.kwargs)
            return DecodeResult("ok", encode_image(image, job.fmt))
        except PixelLimitError as e:
            return DecodeResult("too_large", message=str(e))
        except codec.BitstreamError as e:
            return DecodeResult("damaged", message=str(e))
        except UsageError as e:
            return DecodeResult("refused", message=str(e))
        except Exception as e:  # noqa: BLE001 - this request's failure, named by its type
            return DecodeResult("error", message=f"{type(e).__name__}: {e}")


@dataclass(frozen=True)
class ServiceSettings:
    archive: str
    max_pixels: int  # the largest restoration served (413 above it)
    storage_options: dict[str, Any] = field(default_factory=dict)
    token_sha256: str | None = None  # the token's SHA-256: the token itself never enters Ray
    cache_bytes: int = 256 << 20
    request_timeout_s: float = 60.0
    refresh_s: float = 10.0  # how often a request looks for newly committed data files
    steps: int | None = None  # the decoders' CDM step count (None: each model's own), for the ETag


app = FastAPI(title="resulic restore", docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(max_ongoing_requests=64, max_queued_requests=512, graceful_shutdown_timeout_s=5)
@serve.ingress(app)
class RestoreAPI:
    def __init__(self, decoder: DeploymentHandle, settings: ServiceSettings) -> None:
        self.decoder, self.settings = decoder, settings
        self.max_pixels = settings.max_pixels
        self.archive = Archive(settings.archive, settings.storage_options)
        self.archive.meta()  # refuses what is not an archive before the service reports healthy
        self.index = AssetIndex(self.archive)
        self.index.refresh()
        self.cache = ResponseCache(settings.cache_bytes)
        self._inflight: dict[tuple, asyncio.Future] = {}
        self._refreshed, self._refreshing = time.monotonic(), False
        self._refresh_task: asyncio.Task | None = None

    # ----- routes ----------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/assets")
    async def list_assets(self, request: Request) -> dict:
        self._authorise(request)
        q = request.query_params
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            raise HTTPException(400, "limit must be an integer") from None
        if limit > MAX_PAGE:
            raise HTTPException(413, f"limit {limit} is more than {MAX_PAGE} keys a page")
        if limit < 1:
            raise HTTPException(400, "limit must be at least 1")
        self._refresh_soon()
        rows, after = self.index.page(q.get("prefix", ""), q.get("after"), limit)
        return {"assets": rows, "next_after": after}

    @app.api_route("/v1/assets/{key:path}", methods=["GET", "HEAD"])
    async def asset(self, key: str, request: Request) -> Response:
        self._authorise(request)
        fmt, decoder = request.query_params.get("format", "png"), request.query_params.get("decoder", "auto")
        if fmt not in MEDIA_TYPES:
            raise HTTPException(400, f"format must be one of {', '.join(MEDIA_TYPES)}")
        if decoder not in DECODERS:
            raise HTTPException(400, f"decoder must be one of {', '.join(DECODERS)}")
        entry = self.index.get(key)
        if entry is None and await self._refresh(min_age_s=1.0):  # committed since the last look?
            entry = self.index.get(key)
        else:
            self._refresh_soon()
        if entry is None:
            raise HTTPException(404, f"{key!r} is not in the archive")
        loc = (entry["file"], entry["row_group"], entry["row"], fmt, decoder)
        known = request.headers.get("if-none-match", "")
        cached = self.cache.get(loc)
        hit = cached is not None
        if not hit and known:  # a client revalidating what this replica has not kept: a read, no decode
            stream, entry = await self._stream(entry, fmt)
            etag = etag_of(stream, fmt, decoder, self.settings.steps)
            if matches(known, etag):
                return Response(status_code=304, headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})
            loc = (entry["file"], entry["row_group"], entry["row"], fmt, decoder)
        cached = cached or await self._restore(entry, loc)
        headers = {"ETag": cached.etag, "Cache-Control": CACHE_CONTROL, "X-Resulic-Cache": "hit" if hit else "miss"}
        if known and matches(known, cached.etag):
            return Response(status_code=304, headers=headers)
        headers["Content-Length"] = str(len(cached.body))
        body = b"" if request.method == "HEAD" else cached.body
        return Response(body, media_type=cached.media_type, headers=headers)

    # ----- helpers ---------------------------------------------------------------------------
    def _authorise(self, request: Request) -> None:
        """A bearer token compared in constant time (as SHA-256 digests, so that the token's
        length does not show either). Without a configured token (loopback only) all may read."""
        if self.settings.token_sha256 is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        digest = hashlib.sha256(given.strip().encode()).hexdigest()
        if not (hmac.compare_digest(digest, self.settings.token_sha256) and scheme.lower() == "bearer"):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": 'Bearer realm="resulic"'})

    async def _refresh(self, min_age_s: float) -> bool:
        """Read data files committed since the last refresh, unless one ran in the last
        ``min_age_s`` seconds or is running; True when the index changed."""
        if self._refreshing or time.monotonic() - self._refreshed < min_age_s:
            return False
        self._refreshing = True
        try:
            return await asyncio.to_thread(self.index.refresh)
        except Exception:  # noqa: BLE001 - storage failing: the index as it was answers meanwhile
            logging.getLogger("ray.serve").warning("resulic: refreshing the archive's index failed", exc_info=True)
            return False
        finally:
            self._refreshing, self._refreshed = False, time.monotonic()

    def _refresh_soon(self) -> None:
        """Every ``refresh_s``, a request starts a refresh it does not wait for."""
        if not self._refreshing and time.monotonic() - self._refreshed >= self.settings.refresh_s:
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh(self.settings.refresh_s))  # kept: not collected

    async def _restore(self, entry: dict, loc: tuple) -> CachedResponse:
        """One decode per location however many requests ask for it at once; a request that
        times out leaves the decode running for the others and the cache."""
        task = self._inflight.get(loc)
        if task is None:
            task = asyncio.ensure_future(self._decode(entry, loc))
            self._inflight[loc] = task
            task.add_done_callback(lambda _: self._inflight.pop(loc, None))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"restoring {entry['key']!r} took more than {self.settings.request_timeout_s:g} s") from None

    async def _stream(self, entry: dict, fmt: str) -> tuple[bytes, dict]:
        """The asset's bitstream, checked as far as the container and the pixel limit go, and the
        index entry it was read by. A data file gone since the index read it (a compaction
        replaced it) sends the index to storage at once and the read is tried again."""
        key = entry["key"]
        try:
            try:
                row = await asyncio.to_thread(self.archive.read_asset, entry, ["key", "status", "error", "bitstream"])
            except FileNotFoundError:
                await asyncio.to_thread(self.index.refresh)
                self._refreshed = time.monotonic()
                found = self.index.get(key)
                if found is None:  # its only file went away outside a compaction
                    raise HTTPException(404, f"{key!r} is not in the archive") from None
                entry = found
                row = await asyncio.to_thread(self.archive.read_asset, entry, ["key", "status", "error", "bitstream"])
        except HTTPException:
            raise
        except Exception as e:  # noqa: BLE001 - a data file gone or damaged since the index read it
            raise HTTPException(500, f"cannot read {key!r} from {entry['file']}: {type(e).__name__}") from None
        if row["status"] != STATUS_WRITTEN or row["bitstream"] is None:
            raise HTTPException(409, f"{key!r} was archived with status {row['status']}: {row['error']}")
        stream = row["bitstream"]
        try:
            head = Bitstream.from_bytes(stream).header
        except BitstreamError as e:
            raise HTTPException(422, f"{key!r}: damaged bitstream: {e}") from None
        if head.width * head.height > self.max_pixels:
            raise HTTPException(413, f"{key!r} restores to {head.width}x{head.height} pixels, more than this "
                                     f"service's limit of {self.max_pixels:,}")  # fmt: skip
        refused = too_large_for(fmt, head.width, head.height)
        if refused:  # known before a decode is spent on it
            raise HTTPException(413, f"{key!r}: {refused}")
        return stream, entry

    async def _decode(self, entry: dict, loc: tuple) -> CachedResponse:
        key, fmt, decoder = entry["key"], loc[3], loc[4]
        stream, entry = await self._stream(entry, fmt)
        try:
            result: DecodeResult = await self.decoder.decode.remote(DecodeJob(stream, fmt, decoder))
        except Exception as e:  # noqa: BLE001 - backpressure or a replica lost: try again later
            raise HTTPException(503, f"decoder unavailable: {type(e).__name__}") from None
        if result.outcome == "too_large":
            raise HTTPException(413, f"{key!r}: {result.message}")
        if result.outcome == "damaged":
            raise HTTPException(422, f"{key!r}: damaged bitstream: {result.message}")
        if result.outcome == "refused":
            raise HTTPException(400, f"{key!r}: {result.message}")
        if result.outcome != "ok":
            raise HTTPException(500, f"{key!r}: decoding failed: {result.message}")
        cached = CachedResponse(result.body, MEDIA_TYPES[fmt], etag_of(stream, fmt, decoder, self.settings.steps))
        self.cache.put(loc, cached)
        return cached


__all__ = ["AssetDecoder", "RestoreAPI", "ServiceSettings", "DecodeJob", "DecodeResult", "MEDIA_TYPES"]
