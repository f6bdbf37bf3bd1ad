"""Captioning backends: a local vision-language model (transformers) or an OpenAI-compatible
chat-completions endpoint (vLLM, hosted APIs). Both also answer text-only requests, which the
residual step uses when it is configured to ask a model.

Configuration travels as a plain :class:`CaptionConfig` (actors rebuild the backend from it);
an API key is read from the environment variable it names, sent only in the Authorization
header and never logged or put in an error message.
"""

from __future__ import annotations

import base64
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from PIL import Image

from codec.usage import UsageError

DEFAULT_PROMPT = (
    "Describe this photo in one or two plain sentences, at most 40 words: the main subjects, their "
    "colours and materials, their layout, and any legible text."
)
BACKENDS = ("none", "known", "transformers", "openai")
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class CaptionError(RuntimeError):
    """A caption could not be had (after retries); the message is safe to record. ``systemic``:
    the endpoint itself is unusable (refused connections, credentials, a wrong URL), so every
    other image would fail the same way. ``transient``: the endpoint's passing trouble (busy,
    timing out, failing with 5xx through every retry), which a later job may not meet; an
    answer refusing this image (another 4xx) is the image's."""

    def __init__(self, message: str, systemic: bool = False, transient: bool = False) -> None:
        super().__init__(message)
        self.systemic, self.transient = systemic, transient


SYSTEMIC_STATUS = {401, 403, 404}  # credentials or URL: the same answer for every image


@dataclass
class CaptionConfig:
    backend: str = "none"  # none | known (manifest, XMP, EXIF only) | transformers | openai
    model: str | None = None  # transformers: local path or hub id; openai: the model name
    endpoint: str | None = None  # openai: base URL, e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"
    prompt: str = DEFAULT_PROMPT
    max_new_tokens: int = 80
    max_side: int = 768  # images are downscaled to this before captioning
    concurrency: int = 4  # openai: requests in flight per actor
    timeout: float = 60.0  # openai: seconds per request
    retries: int = 4  # openai: retries of a failed request (connection errors, 408/429/5xx)
    backoff: float = 1.0  # openai: first retry delay in seconds, doubled each time
    residual: str = "words"  # words (deterministic) | model (ask the captioning model, as the paper does)
    max_residual_words: int = 12

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown captioner {self.backend!r} (known: {', '.join(BACKENDS)})")
        if self.residual not in ("words", "model"):
            raise UsageError("residual must be 'words' or 'model'")
        if self.backend == "transformers" and not self.model:
            raise UsageError("the transformers captioner needs --caption-model (a local path or hub id)")
        if self.backend == "openai" and not (self.endpoint and self.model):
            raise UsageError("the openai captioner needs --caption-endpoint and --caption-model")
        if self.residual == "model" and self.backend not in ("transformers", "openai"):
            raise UsageError("a model residual needs a transformers or openai captioner")

    @property
    def captions_reconstructions(self) -> bool:
        return self.backend in ("transformers", "openai")

    def to_dict(self) -> dict:
        return asdict(self)


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)


class TransformersCaptioner:
    """``AutoProcessor`` + ``AutoModelForImageTextToText`` from a local path or hub id; greedy decoding."""

    def __init__(self, config: CaptionConfig, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.config = config
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.processor = AutoProcessor.from_pretrained(config.model)
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # batched generation continues each prompt at its end
        self.model = AutoModelForImageTextToText.from_pretrained(config.model, dtype=dtype).to(self.device).eval()

    def _prompt(self, content: list[dict]) -> str:
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def _generate(self, inputs) -> list[str]:
        import torch

        inputs = inputs.to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.config.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def caption(self, images: list[Image.Image]) -> list[str]:
        if not images:
            return []
        text = self._prompt([{"type": "image"}, {"type": "text", "text": self.config.prompt}])
        images = [_shrink(im, self.config.max_side) for im in images]
        return self._generate(self.processor(images=images, text=[text] * len(images), return_tensors="pt", padding=True))

    def complete(self, prompts: list[str]) -> list[str]:
        if not prompts:
            return []
        texts = [self._prompt([{"type": "text", "text": p}]) for p in prompts]
        return self._generate(self.processor(text=texts, return_tensors="pt", padding=True))


class ChatCaptioner:
    """An OpenAI-compatible ``/chat/completions`` endpoint, with bounded concurrency and retries."""

    def __init__(self, config: CaptionConfig) -> None:
        import requests

        self.config = config
        self.url = config.endpoint.rstrip("/") + "/chat/completions"
        self.session = requests.Session()
        key = os.environ.get(config.api_key_env)
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def _post(self, content: list[dict]) -> str:
        import requests

        body = {"model": self.config.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.config.max_new_tokens, "temperature": 0}  # fmt: skip
        delay, last, refused = self.config.backoff, "", False
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(delay)
                delay *= 2
            try:
                r = self.session.post(self.url, json=body, timeout=self.config.timeout)
            except requests.RequestException as e:
                last = f"{type(e).__name__}"  # the exception text may quote the request: keep it out
                refused = isinstance(e, requests.ConnectionError) and not isinstance(e, requests.Timeout)
                continue
            refused = False
            if r.status_code in RETRY_STATUS:
                last = f"HTTP {r.status_code}"
                after = r.headers.get("Retry-After", "")
                if after.replace(".", "", 1).isdigit():
                    delay = max(delay, min(float(after), 60.0))
                continue
            if r.status_code != 200:
                raise CaptionError(f"caption endpoint answered HTTP {r.status_code}", r.status_code in SYSTEMIC_STATUS)
            try:
                return r.json()["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise CaptionError("caption endpoint answered without choices[0].message.content") from e
        raise CaptionError(f"caption endpoint failed after {self.config.retries + 1} attempts ({last})", refused,
                           transient=not refused)  # fmt: skip

    def _map(self, contents: list[list[dict]]) -> list[str | CaptionError]:
        def one(content: list[dict]) -> str | CaptionError:
            try:
                return self._post(content)
            except CaptionError as e:
                return e

        with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
            return list(pool.map(one, contents))

    def caption(self, images: list[Image.Image]) -> list[str | CaptionError]:
        contents = []
        for im in images:
            buf = io.BytesIO()
            _shrink(im, self.config.max_side).save(buf, "JPEG", quality=90)
            url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
            contents.append([{"type": "text", "text": self.config.prompt}, {"type": "image_url", "image_url": {"url": url}}])
        return self._map(contents)

    def complete(self, prompts: list[str]) -> list[str | CaptionError]:
        return self._map([[{"type": "text", "text": p}] for p in prompts])


def make_captioner(config: CaptionConfig) -> TransformersCaptioner | ChatCaptioner | None:
    """The model backend for ``config`` (None for the backends that run no model)."""
    if config.backend == "transformers":
        return TransformersCaptioner(config)
    if config.backend == "openai":
        return ChatCaptioner(config)
    return None
