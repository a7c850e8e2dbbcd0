"""Image generation and image analysis handlers.

Both are plain functions of (params, job): the worker and the inline mode call them alike.
Everything is computed with Pillow alone (no numpy), fast enough to run in unit tests.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops, ImageMath, ImageStat

from app.params import AnalyzeParams, ImageParams, max_image_pixels, open_bounded
from stack.jobs.registry import OUTPUT_FILE_MODE, JobContext, make_output_dir

# A band renderer turns rows [top, bottom) of the picture, at `supersample` times its size, into
# an RGB strip.
BandRenderer = Callable[[int, int], Image.Image]

JULIA_ITERATIONS = 40
# Well-known Julia constants with pleasant shapes; the prompt picks one.
JULIA_CONSTANTS: tuple[complex, ...] = (
    complex(-0.8, 0.156),
    complex(-0.7269, 0.1889),
    complex(0.285, 0.01),
    complex(-0.4, 0.6),
    complex(0.355, 0.355),
    complex(-0.835, -0.2321),
)
# The escape counts Pillow's mandelbrot reports exactly: `k * 255 / quality`, so at quality 255
# the value is k itself. Deeper iterations only decide what is inside the set.
EXACT_ESCAPES = 255
# A cosine palette (Inigo Quilez's): three phase-shifted waves over log(escape count), about two
# colour cycles from the far background to the set's edge, so the filaments stand out.
PALETTE_PHASES = (0.5, 0.65, 0.85)
PALETTE_CYCLES = 2.0
HISTOGRAM_BINS = 16
# Quantising a 4000x3000 photo is slow and the dominant colours barely change when it is shrunk.
MAX_QUANTIZE_PIXELS = 1_000_000


# --- generation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Viewport:
    """Maps pixel rows/columns of the full picture onto the complex plane, keeping aspect."""

    width: int
    height: int
    left: float
    top: float
    scale: float  # plane units per pixel

    @classmethod
    def fit(cls, width: int, height: int, centre: complex, span: complex) -> Viewport:
        scale = max(span.real / width, span.imag / height)
        return cls(
            width=width,
            height=height,
            left=centre.real - scale * width / 2,
            top=centre.imag - scale * height / 2,
            scale=scale,
        )

    def band_extent(self, top: int, bottom: int) -> tuple[float, float, float, float]:
        return (
            self.left,
            self.top + self.scale * top,
            self.left + self.scale * self.width,
            self.top + self.scale * bottom,
        )

    def band_coordinates(self, top: int, bottom: int) -> tuple[Image.Image, Image.Image]:
        """Real and imaginary parts of every pixel of the band, as float ("F") images."""
        rows = bottom - top
        xs = Image.new("F", (self.width, 1))
        xs.putdata([self.left + self.scale * x for x in range(self.width)])
        ys = Image.new("F", (1, rows))
        ys.putdata([self.top + self.scale * (top + y) for y in range(rows)])
        size = (self.width, rows)
        nearest = Image.Resampling.NEAREST
        return xs.resize(size, nearest), ys.resize(size, nearest)


def _calc(expression: Callable[[dict[str, Any]], Any], **images: Image.Image) -> Image.Image:
    """Whole-image arithmetic in C through ImageMath: our stand-in for numpy."""
    result = ImageMath.lambda_eval(expression, **images)
    assert isinstance(result, Image.Image)
    return result


def _sampled(params: ImageParams) -> tuple[int, int]:
    """The size the renderers draw at: `supersample` samples per pixel side, averaged down."""
    return params.width * params.supersample, params.height * params.supersample


def _mandelbrot(params: ImageParams) -> BandRenderer:
    view = Viewport.fit(*_sampled(params), complex(-0.75, 0), complex(3.0, 2.4))
    colours = _palette(params.prompt)

    def render(top: int, bottom: int) -> Image.Image:
        size, extent = (view.width, bottom - top), view.band_extent(top, bottom)
        escapes = Image.effect_mandelbrot(size, extent, min(params.iterations, EXACT_ESCAPES))
        # 0: no escape within the exact range (escaping at once takes |c| > 10, out of the view).
        unescaped = escapes.point(lambda v: 255 if v == 0 else 0)
        # Slow escapers hug the set: the brightest colour.
        strip = ImageChops.lighter(escapes, unescaped).convert("RGB").point(colours)
        inside = unescaped
        if params.iterations > EXACT_ESCAPES:  # the detail knob: tell the set from slow escapers
            deep = Image.effect_mandelbrot(size, extent, params.iterations)
            # There 0 also means "escaped within iterations/255 steps": only where both say 0.
            inside = ImageChops.multiply(unescaped, deep.point(lambda v: 255 if v == 0 else 0))
        strip.paste((0, 0, 0), mask=inside)
        return strip

    return render


def _julia(params: ImageParams) -> BandRenderer:
    view = Viewport.fit(*_sampled(params), complex(0, 0), complex(3.2, 2.4))
    c = JULIA_CONSTANTS[_prompt_digest(params.prompt)[0] % len(JULIA_CONSTANTS)]
    colours = _palette(params.prompt)

    def render(top: int, bottom: int) -> Image.Image:
        zr, zi = view.band_coordinates(top, bottom)
        escape = Image.new("F", zr.size, 0)
        for _ in range(JULIA_ITERATIONS):
            # Escaped points overflow to inf/nan; nan compares false, so they stop counting,
            # which is exactly the escape-time count without per-pixel Python.
            nzr = _calc(lambda a: a["zr"] * a["zr"] - a["zi"] * a["zi"] + c.real, zr=zr, zi=zi)
            zi = _calc(lambda a: a["zr"] * a["zi"] * 2 + c.imag, zr=zr, zi=zi)
            zr = nzr
            escape = _calc(
                lambda a: a["n"] + ((a["zr"] * a["zr"] + a["zi"] * a["zi"]) < 4),
                n=escape,
                zr=zr,
                zi=zi,
            )
        scaled = _calc(lambda a: a["n"] * (255 / JULIA_ITERATIONS), n=escape)
        return scaled.convert("L").convert("RGB").point(colours)

    return render


def _gradient(params: ImageParams) -> BandRenderer:
    view = Viewport.fit(*_sampled(params), complex(0, 0), complex(2, 2))
    angle = _prompt_digest(params.prompt)[1] / 256 * 2 * math.pi
    colours = _palette(params.prompt)
    cos_a, sin_a = math.cos(angle), math.sin(angle)

    def render(top: int, bottom: int) -> Image.Image:
        x, y = view.band_coordinates(top, bottom)
        # A linear ramp along the prompt's angle, darkened towards the edges like a vignette.
        value = _calc(
            lambda a: (
                ((a["x"] * cos_a + a["y"] * sin_a) * 0.3 + 0.5 - (a["x"] * a["x"] + a["y"] * a["y"]) * 0.15)
                * 255
            ),
            x=x,
            y=y,
        )
        return value.convert("L").convert("RGB").point(colours)  # "L" clamps to 0..255

    return render


_RENDERERS: dict[str, Callable[[ImageParams], BandRenderer]] = {
    "mandelbrot": _mandelbrot,
    "julia": _julia,
    "gradient": _gradient,
}


def _prompt_digest(prompt: str) -> bytes:
    return hashlib.sha256(prompt.encode()).digest()


def _palette(prompt: str) -> list[int]:
    """A lookup table (256 levels per R, G, B band) from a grey level to a vivid colour: the
    phases go to the channels in an order the prompt picks, so a prompt has its own hues."""
    orders = list(itertools.permutations(PALETTE_PHASES))
    phases = orders[_prompt_digest(prompt)[2] % len(orders)]
    table = []
    for phase in phases:
        for level in range(256):
            x = math.log1p(level) / math.log(256)
            table.append(round(255 * (0.5 + 0.5 * math.cos(2 * math.pi * (PALETTE_CYCLES * x + phase)))))
    return table


def _bands(height: int, tiles: int) -> list[tuple[int, int]]:
    # More tiles than rows would give empty bands; cap so every band has at least one row.
    count = min(tiles, height)
    edges = [height * i // count for i in range(count + 1)]
    return list(itertools.pairwise(edges))


def _save_png_atomically(image: Image.Image, path: Path) -> int:
    """Write to a temp file beside the target and rename: readers never see half a PNG."""
    make_output_dir(path.parent)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, OUTPUT_FILE_MODE)  # mkstemp's 0600 would hide it from a web server
        with os.fdopen(fd, "wb") as tmp:
            image.save(tmp, format="PNG")
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path.stat().st_size


def generate_image(params: ImageParams, job: JobContext) -> dict[str, Any]:
    """Render a fractal or gradient PNG band by band into the job's outputs, as `image.png`.

    This is where an external provider plugs in (the seed projects call an HTTP image API):
    same params, same progress calls, same result shape; only the pixels come from elsewhere.
    """
    render = _RENDERERS[params.style](params)
    canvas = Image.new("RGB", (params.width, params.height))
    bands = _bands(params.height, params.tiles)
    factor = params.supersample
    for number, (top, bottom) in enumerate(bands, start=1):
        strip = render(top * factor, bottom * factor)
        if factor > 1:  # averaging the samples smooths the edges (antialiasing)
            strip = strip.reduce(factor)
        canvas.paste(strip, (0, top))
        # 95 at most: the last 5% is the write, which can be slow on network storage.
        job.progress(95 * number / len(bands), f"rendering tile {number}/{len(bands)}")

    name = "image.png"
    size = _save_png_atomically(canvas, job.output_dir / name)
    job.progress(100, f"saved {name}")
    return {
        "path": name,
        "url": f"/api/jobs/{job.id}/files/{name}",
        "width": params.width,
        "height": params.height,
        "bytes": size,
        "style": params.style,
        "prompt": params.prompt,
    }


# --- analysis -------------------------------------------------------------------------------


def _stats_image(image: Image.Image) -> Image.Image:
    """A copy in an 8-bit mode whose bands mean something (palette indices do not)."""
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image.copy()  # the original dies when its file is closed
    if image.mode == "P" and "transparency" in image.info:
        return image.convert("RGBA")
    if image.mode == "I" or image.mode.startswith("I;16"):
        # 16-bit greyscale (PNG, TIFF): convert("L") would clip everything above 255 to white.
        return image.convert("I").point(lambda value: value / 256).convert("L")
    return image.convert("RGB")


def _histogram(image: Image.Image) -> dict[str, list[int]]:
    """Per band, Pillow's 256-bin histogram summed into 16 bins of 16 levels (0-15, 16-31, ...)."""
    flat = image.histogram()
    width = 256 // HISTOGRAM_BINS
    result: dict[str, list[int]] = {}
    for index, band in enumerate(image.getbands()):
        levels = flat[index * 256 : (index + 1) * 256]
        result[band] = [sum(levels[i : i + width]) for i in range(0, 256, width)]
    return result


def _dominant_colours(image: Image.Image, top: int) -> list[dict[str, Any]]:
    """The `top` colours of an adaptive palette of that size, with their share of pixels.

    Transparency is dropped (an RGB copy), so fully transparent areas count as their colour.
    """
    rgb = image.convert("RGB")
    if rgb.width * rgb.height > MAX_QUANTIZE_PIXELS:
        # NEAREST keeps real colours; a smoothing filter would invent blends.
        factor = math.sqrt(MAX_QUANTIZE_PIXELS / (rgb.width * rgb.height))
        size = (max(1, int(rgb.width * factor)), max(1, int(rgb.height * factor)))
        rgb = rgb.resize(size, Image.Resampling.NEAREST)
    quantized = rgb.quantize(colors=top)
    palette = quantized.getpalette() or []
    counts = quantized.getcolors(maxcolors=256) or []
    total = rgb.width * rgb.height
    colours = []
    for count, index in sorted(counts, key=lambda item: (-item[0], item[1]))[:top]:
        assert isinstance(index, int)  # a palette ("P") image counts palette indices
        r, g, b = palette[index * 3 : index * 3 + 3]
        colours.append(
            {
                "rgb": [r, g, b],
                "hex": f"#{r:02x}{g:02x}{b:02x}",
                "share": round(count / total, 4),
            }
        )
    return colours


def analyze_image(params: AnalyzeParams, job: JobContext) -> dict[str, Any]:
    """Size, mode, per-band means and histograms, dominant colours and brightness of an image."""
    job.progress(10, "decoding image")
    # Bounded again here, before load() decodes a pixel, not only at submit: handlers are also
    # called directly, and a job queued before STACK_MAX_IMAGE_PIXELS was lowered runs under the new one.
    with open_bounded(params.image_bytes(), max_pixels=max_image_pixels()) as opened:
        opened.load()
        image_format = opened.format
        original_mode = opened.mode
        image = _stats_image(opened)

    job.progress(20, "reading size and mode")
    width, height = image.size
    result: dict[str, Any] = {
        "width": width,
        "height": height,
        "mode": original_mode,
        "format": image_format,
        "pixels": width * height,
    }

    job.progress(40, "computing band means")
    means = ImageStat.Stat(image).mean
    result["mean"] = {band: round(value, 3) for band, value in zip(image.getbands(), means, strict=True)}

    job.progress(60, "computing histogram")
    result["histogram"] = _histogram(image)

    job.progress(80, "finding dominant colours")
    result["dominant_colours"] = _dominant_colours(image, params.top_colours)

    job.progress(95, "measuring brightness")
    result["brightness"] = round(ImageStat.Stat(image.convert("L")).mean[0], 3)

    job.progress(100, "analysed")
    return result
