"""Params models of the reference app's job kinds.

They validate untrusted JSON from the API, so every field is bounded and unknown fields are
rejected: a client that misspells `widht` gets an error naming it instead of a silent default.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import re
from collections.abc import Iterator
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from stack.config import get_settings

# Roughly 15 MB of image once decoded: large enough for photos, small enough that a job row and a
# broker message carrying it stay reasonable.
MAX_IMAGE_B64_CHARS = 20_000_000
MAX_LOG_DATA_BYTES = 64 * 1024

# A 2x2 PNG: the cheapest image there is to analyse (the canary's, and the docs' example).
TINY_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR42mM8oRHFwMDAxMDAwMDAAAAQEAFO7kM9"
    "dwAAAABJRU5ErkJggg=="
)
CANARY_EVENT = "stack.doctor.canary"


def examples(*params: dict[str, Any]) -> ConfigDict:
    """Cheap, valid params shown in /docs; `stack doctor` sends the first as its canary job."""
    return ConfigDict(json_schema_extra={"examples": list(params)})


_DATA_URL_PREFIX = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


class _Params(BaseModel):
    # Strict: the API takes exactly the types its schema documents (no `false` for a number,
    # no "5" for an integer), and unknown fields are a mistake worth a 422.
    model_config = ConfigDict(extra="forbid", strict=True)


class ImageParams(_Params):
    model_config = examples({"prompt": "canary", "width": 64, "height": 48, "tiles": 2, "supersample": 1})

    prompt: str = Field(default="mandelbrot", min_length=1, max_length=2000)
    width: int = Field(default=512, ge=16, le=2048)
    height: int = Field(default=512, ge=16, le=2048)
    tiles: int = Field(default=8, ge=1, le=64, description="horizontal bands rendered one by one")
    style: Literal["mandelbrot", "julia", "gradient"] = "mandelbrot"
    # The knob between "instant" and "a render you watch": time grows about linearly with it,
    # as it would with a real provider's quality setting.
    iterations: int = Field(
        default=100, ge=10, le=5000, description="mandelbrot escape-time iterations: detail and time"
    )
    supersample: int = Field(
        default=2, ge=1, le=3, description="samples per pixel side, averaged: smooth edges, n*n the work"
    )


def _decode_base64(value: str) -> bytes:
    # Clients wrap base64 at 76 columns and paste data URLs; both are harmless, anything else
    # outside the alphabet is a client bug worth reporting rather than silently skipping.
    payload = _WHITESPACE.sub("", _DATA_URL_PREFIX.sub("", value.strip(), count=1))
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise ValueError("image_data is not valid base64") from None


class ImageTooLarge(ValueError):
    """The image would decode to more pixels than STACK_MAX_IMAGE_PIXELS allows."""

    def __init__(self, pixels: str, limit: int) -> None:
        super().__init__(
            f"image_data would decode to {pixels} pixels, more than the limit of {limit:,} "
            "(STACK_MAX_IMAGE_PIXELS): send a smaller image, or raise the setting"
        )


def max_image_pixels() -> int:
    """STACK_MAX_IMAGE_PIXELS, read when an image is checked rather than when this module loads.

    Params models get no Settings: FastAPI validates a body against the kind's model, the worker
    calls `JobKind.validate(raw)`, neither with a context. Both processes run on `get_settings()`
    (cached: this is a lookup), so that is the limit they were started with; reading it lazily
    keeps importing app.params free of environment reads, and a test can patch it.
    """
    limit = get_settings().max_image_pixels
    # Pillow's own guard follows the setting, process-wide: it also bounds what `.size` does not
    # show (a GIF's later frames, a TIFF's tiles), and left at its default (89 M pixels, error at
    # twice that) it would refuse images the setting allows. Between the limit and twice it,
    # Pillow only warns (DecompressionBombWarning) and our own check below refuses.
    Image.MAX_IMAGE_PIXELS = limit
    return limit


@contextlib.contextmanager
def open_bounded(data: bytes, *, max_pixels: int) -> Iterator[Image.Image]:
    """The image, opened from its header only, refused (ImageTooLarge) if it would decode to more
    than `max_pixels` pixels: a 50 KB PNG may claim 13000x13000, 1.5 GB once decoded.

    Pillow reads pixels only on `load()`, so checking `.size` first costs nothing.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"{width}x{height} = {width * height:,}", max_pixels)
            yield image
    except Image.DecompressionBombError as exc:  # Pillow's guard, at twice the limit or in a frame
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageTooLarge(f"{int(claimed[1]):,}" if claimed else "too many", max_pixels) from None


def _check_image(data: bytes) -> None:
    try:
        with open_bounded(data, max_pixels=max_image_pixels()) as img:
            img.verify()  # checks the file's structure (PNG chunks and CRCs) without decoding pixels
    except ImageTooLarge:
        raise
    except Exception:
        # Open and verify() report corrupt input through many exception types depending on the
        # codec (UnidentifiedImageError, OSError, SyntaxError, struct.error, ...).
        raise ValueError("image_data is not an image Pillow can read (PNG, JPEG, GIF, WebP, ...)") from None


class AnalyzeParams(_Params):
    model_config = examples({"image_data": TINY_PNG_B64, "top_colours": 2})

    image_data: str = Field(
        min_length=1,
        max_length=MAX_IMAGE_B64_CHARS,
        description="base64 image, optionally as a data: URL",
    )
    top_colours: int = Field(default=5, ge=1, le=16)

    @field_validator("image_data")
    @classmethod
    def _must_be_an_image(cls, value: str) -> str:
        _check_image(_decode_base64(value))
        return value

    def image_bytes(self) -> bytes:
        """The decoded image.

        Decoded again rather than stashed during validation: a field validator cannot reach the
        instance, and base64 decoding is cheap next to the Pillow `verify()` done once above.
        """
        return _decode_base64(self.image_data)


class ContentParams(_Params):
    model_config = examples({"text": "# One\nAlice met Bob.\n# Two\nBob waved to Alice.", "title": "Canary"})

    text: str = Field(min_length=1, max_length=1_000_000)
    title: str | None = Field(default=None, max_length=200)
    chapter_words: int = Field(
        default=800, ge=50, le=20_000, description="chunk size when the text has no chapter headings"
    )


class LogParams(_Params):
    model_config = examples({"event": CANARY_EVENT, "level": "debug"})

    event: str = Field(min_length=1, max_length=200)
    level: Literal["debug", "info", "warning", "error"] = "info"
    data: dict[str, Any] = Field(default_factory=dict)
    actor: str | None = Field(default=None, max_length=200)

    @field_validator("data")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        # One audit line must stay one small append; a megabyte payload belongs in storage.
        size = len(json.dumps(value, default=str).encode())
        if size > MAX_LOG_DATA_BYTES:
            raise ValueError(f"data is {size} bytes as JSON; keep it under {MAX_LOG_DATA_BYTES}")
        return value


def soft_time_limit() -> float:
    """STACK_TASK_SOFT_TIME_LIMIT, read when params are checked (see max_image_pixels)."""
    return get_settings().task_soft_time_limit


class DemoParams(_Params):
    seconds: float = Field(
        default=1.0, ge=0, le=3600, description="at most STACK_TASK_SOFT_TIME_LIMIT (300 s by default)"
    )
    steps: int = Field(default=10, ge=1, le=1000)
    fail_at: int | None = Field(default=None, ge=1)
    transient_failures: int = Field(default=0, ge=0, le=100)
    message: str = Field(default="working", max_length=200)

    @field_validator("seconds")
    @classmethod
    def _within_time_limit(cls, value: float) -> float:
        # Longer would be stopped by the soft time limit every time: a failure, not a demo.
        limit = soft_time_limit()
        if value >= limit:
            raise ValueError(
                f"seconds ({value:g}) must be below the soft time limit of {limit:g} s "
                "(STACK_TASK_SOFT_TIME_LIMIT): ask for less, or raise the setting"
            )
        return value

    @field_validator("fail_at")
    @classmethod
    def _within_steps(cls, value: int | None, info: ValidationInfo) -> int | None:
        # A field validator (not a model one) so the error's location is `fail_at`; `steps` is
        # declared first, hence already in info.data unless it was itself invalid.
        steps = info.data.get("steps")
        if value is not None and steps is not None and value > steps:
            raise ValueError(f"fail_at ({value}) must be <= steps ({steps}), or the job would never fail")
        return value
