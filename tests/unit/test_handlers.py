"""The reference app's handlers, called directly: no Celery, no HTTP, no database."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from PIL import Image, ImageStat
from pydantic import BaseModel, ValidationError

from app.audit import write_log
from app.content import generate_content
from app.demo import demo
from app.images import analyze_image, generate_image
from app.kinds import registry
from app.params import (
    AnalyzeParams,
    ContentParams,
    DemoParams,
    ImageParams,
    LogParams,
)
from stack.jobs.registry import JobContext, TransientError

Progress = list[tuple[float, str]]


@pytest.fixture
def progress() -> Progress:
    return []


@pytest.fixture
def make_job(tmp_path: Path, progress: Progress) -> Callable[..., JobContext]:
    def make(*, kind: str = "test", attempt: int = 1, job_id: str = "job-1") -> JobContext:
        def report(percent: float, message: str = "") -> None:
            progress.append((percent, message))

        return JobContext(id=job_id, kind=kind, attempt=attempt, storage_dir=tmp_path, progress=report)

    return make


@pytest.fixture
def job(make_job: Callable[..., JobContext]) -> JobContext:
    return make_job()


def percents(progress: Progress) -> list[float]:
    return [percent for percent, _ in progress]


def assert_strictly_increasing_to_100(progress: Progress) -> None:
    values = percents(progress)
    assert values == sorted(set(values)), values
    assert values[-1] == 100
    assert all(0 <= v <= 100 for v in values)


def png_base64(image: Image.Image, *, data_url: bool = False) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"data:image/png;base64,{encoded}" if data_url else encoded


def error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(part) for part in error["loc"]) for error in exc.errors()}


# --- generate_image -------------------------------------------------------------------------


Style = Literal["mandelbrot", "julia", "gradient"]


@pytest.mark.parametrize("style", ["mandelbrot", "julia", "gradient"])
def test_generate_image_writes_a_real_png(
    style: Style, job: JobContext, tmp_path: Path, progress: Progress
) -> None:
    params = ImageParams(prompt="a test", width=96, height=64, tiles=4, style=style)

    result = generate_image(params, job)

    path = tmp_path / "jobs" / "job-1" / "image.png"
    assert result == {
        "path": "image.png",
        "url": "/api/jobs/job-1/files/image.png",
        "width": 96,
        "height": 64,
        "bytes": path.stat().st_size,
        "style": style,
        "prompt": "a test",
    }
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (96, 64)
        assert len(image.convert("RGB").getcolors(maxcolors=96 * 64) or []) > 1
    assert list(path.parent.iterdir()) == [path], "no temp file left behind"
    assert_strictly_increasing_to_100(progress)
    assert [m for _, m in progress][:4] == [f"rendering tile {i}/4" for i in range(1, 5)]


def test_generate_image_default_size_reports_every_tile(job: JobContext, progress: Progress) -> None:
    generate_image(ImageParams(), job)

    assert_strictly_increasing_to_100(progress)
    assert len([p for p in percents(progress) if 0 < p < 100]) == 8


def test_generate_image_is_colourful_and_readable_by_a_web_server(
    job: JobContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous = os.umask(0o077)  # a worker started with a strict umask
    try:
        generate_image(ImageParams(width=128, height=96, iterations=300), job)
    finally:
        os.umask(previous)
    path = job.output_dir / "image.png"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert (
        stat.S_IMODE(path.parent.stat().st_mode) == stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o755
    )
    with Image.open(path) as image:
        hsv = ImageStat.Stat(image.convert("HSV"))
        lightness = ImageStat.Stat(image.convert("L"))
    # Colour: saturated, many hues; contrast: black (the set) to bright. (The old greyscale-tinted
    # render: hues 165-241, lightness spread 4-9.)
    assert hsv.mean[1] > 100, f"mean saturation {hsv.mean[1]:.0f}/255"
    assert hsv.extrema[0][1] - hsv.extrema[0][0] > 128, f"hues {hsv.extrema[0]}"
    assert lightness.extrema[0][0] < 10 and lightness.extrema[0][1] > 200, lightness.extrema
    assert lightness.stddev[0] > 30, f"lightness spread {lightness.stddev[0]:.0f}"


def test_generate_image_is_deterministic_per_prompt(make_job: Callable[..., JobContext]) -> None:
    def render(prompt: str, job_id: str) -> bytes:
        job = make_job(job_id=job_id)
        generate_image(ImageParams(prompt=prompt, width=32, height=32, tiles=2), job)
        return (job.output_dir / "image.png").read_bytes()

    assert render("sea", "a") == render("sea", "b")
    assert render("sea", "a") != render("forest", "c")


def test_more_tiles_than_rows_still_renders(job: JobContext, progress: Progress) -> None:
    result = generate_image(ImageParams(width=16, height=16, tiles=64), job)

    assert result["height"] == 16
    assert_strictly_increasing_to_100(progress)


@pytest.mark.parametrize(
    ("field", "value"),
    [("width", 8), ("height", 4096), ("tiles", 0), ("style", "cubist"), ("prompt", "")],
)
def test_image_params_bounds(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        ImageParams.model_validate({field: value})
    assert error_fields(exc.value) == {field}


# --- analyze_image --------------------------------------------------------------------------


def test_analyze_solid_red(job: JobContext, progress: Progress) -> None:
    image = Image.new("RGB", (10, 10), (255, 0, 0))

    result = analyze_image(AnalyzeParams(image_data=png_base64(image)), job)

    assert result["width"] == 10
    assert result["height"] == 10
    assert result["pixels"] == 100
    assert result["mode"] == "RGB"
    assert result["format"] == "PNG"
    assert result["mean"] == {"R": 255.0, "G": 0.0, "B": 0.0}
    assert result["histogram"]["R"] == [0] * 15 + [100]
    assert result["histogram"]["G"] == [100] + [0] * 15
    assert result["dominant_colours"] == [{"rgb": [255, 0, 0], "hex": "#ff0000", "share": 1.0}]
    assert result["brightness"] == 76.0  # Pillow's L = 299/1000 R + 587/1000 G + 114/1000 B
    assert_strictly_increasing_to_100(progress)
    assert len(progress) >= 5


def test_analyze_two_colours_with_data_url(job: JobContext) -> None:
    image = Image.new("RGB", (10, 10), (255, 255, 255))
    image.paste((0, 0, 255), (0, 0, 10, 3))  # top 30 pixels blue, 70 white

    params = AnalyzeParams(image_data=png_base64(image, data_url=True), top_colours=3)
    result = analyze_image(params, job)

    assert result["dominant_colours"] == [
        {"rgb": [255, 255, 255], "hex": "#ffffff", "share": 0.7},
        {"rgb": [0, 0, 255], "hex": "#0000ff", "share": 0.3},
    ]
    assert result["mean"] == {"R": 178.5, "G": 178.5, "B": 255.0}
    assert result["histogram"]["R"] == [30] + [0] * 14 + [70]
    assert result["histogram"]["B"] == [0] * 15 + [100]


def test_analyze_greyscale_keeps_its_single_band(job: JobContext) -> None:
    image = Image.new("L", (4, 4), 100)

    result = analyze_image(AnalyzeParams(image_data=png_base64(image)), job)

    assert result["mode"] == "L"
    assert result["mean"] == {"L": 100.0}
    assert result["histogram"]["L"][100 // 16] == 16
    assert result["brightness"] == 100.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not base64 at all!", "image_data is not valid base64"),
        (base64.b64encode(b"plain text, not pixels").decode(), "not an image Pillow can read"),
    ],
)
def test_analyze_params_reject_bad_image_data(data: str, message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        AnalyzeParams(image_data=data)
    assert error_fields(exc.value) == {"image_data"}
    assert message in str(exc.value)


# --- generate_content -----------------------------------------------------------------------

NOVEL = """\
Chapter 1: The Garden
Alice walked into the garden. She saw Bob by the gate.

CHAPTER II
Bob waved to Alice. When Alice waved back, the rain stopped.
Suddenly a bird sang.

# Chapter Three
The end came quietly. Nobody knew why, but suddenly it was over.
"""


def test_content_splits_on_headings(job: JobContext, progress: Progress) -> None:
    result = generate_content(ContentParams(text=NOVEL, title="Garden Tales"), job)

    assert result["title"] == "Garden Tales"
    assert [(c["index"], c["title"]) for c in result["chapters"]] == [
        (1, "Chapter 1: The Garden"),
        (2, "CHAPTER II"),
        (3, "Chapter Three"),
    ]
    assert [c["summary"] for c in result["chapters"]] == [
        "Alice walked into the garden.",
        "Bob waved to Alice.",
        "The end came quietly.",
    ]
    assert [c["words"] for c in result["chapters"]] == [11, 15, 12]
    assert result["words"] == 38
    assert result["characters"] == [
        {"name": "Alice", "mentions": 3},
        {"name": "Bob", "mentions": 2},
    ]
    assert_strictly_increasing_to_100(progress)


def test_content_finds_two_word_names_and_ignores_sentence_openers(job: JobContext) -> None:
    text = "Mary Jane opened the door. Then Mary Jane laughed. Then she left.\n\nThe cat slept. The dog too."

    result = generate_content(ContentParams(text=text), job)

    assert result["characters"] == [{"name": "Mary Jane", "mentions": 2}]


def test_content_chunks_by_words_on_paragraph_boundaries(job: JobContext) -> None:
    paragraph = " ".join(["word"] * 30) + "."
    text = "\n\n".join([paragraph] * 7)  # 210 words, no headings

    result = generate_content(ContentParams(text=text, chapter_words=60), job)

    assert [c["words"] for c in result["chapters"]] == [60, 60, 60, 30]
    assert [c["title"] for c in result["chapters"]] == [f"Chapter {i}" for i in range(1, 5)]
    assert result["words"] == 210
    assert result["title"] is None


def test_content_markdown_book_title_and_cjk_chapters(job: JobContext) -> None:
    text = "# The Book\n\n## 第一章 开始\n他们走了。很好。\n\n## 第二章\n再见。"

    result = generate_content(ContentParams(text=text), job)

    assert result["title"] == "The Book"
    assert [c["title"] for c in result["chapters"]] == ["第一章 开始", "第二章"]
    assert [c["summary"] for c in result["chapters"]] == ["他们走了。", "再见。"]
    assert [c["words"] for c in result["chapters"]] == [6, 2]  # one word per CJK character


# --- write_log ------------------------------------------------------------------------------


def test_write_log_appends_json_lines(job: JobContext, tmp_path: Path, progress: Progress) -> None:
    first = write_log(LogParams(event="login", actor="ana", data={"ip": "10.0.0.1"}), job)
    write_log(LogParams(event="logout", level="warning"), job)

    lines = (tmp_path / "audit.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2
    assert records[0] == first["line"]
    assert first["path"] == "audit.log"
    assert records[0]["event"] == "login"
    assert records[0]["actor"] == "ana"
    assert records[0]["data"] == {"ip": "10.0.0.1"}
    assert records[0]["job_id"] == "job-1"
    assert records[0]["ts"].endswith("+00:00")
    assert records[1] | {"ts": None} == {
        "ts": None,
        "job_id": "job-1",
        "event": "logout",
        "level": "warning",
        "actor": None,
        "data": {},
    }
    assert percents(progress) == [50, 50]


def test_log_params_reject_unknown_level() -> None:
    with pytest.raises(ValidationError) as exc:
        LogParams(event="x", level="fatal")  # type: ignore[arg-type]
    assert error_fields(exc.value) == {"level"}


# --- demo -----------------------------------------------------------------------------------


def test_demo_succeeds_with_progress(job: JobContext, progress: Progress) -> None:
    result = demo(DemoParams(seconds=0.01, steps=4, message="busy"), job)

    assert result == {"steps": 4, "seconds": 0.01, "attempt": 1}
    assert progress == [(25, "busy 1/4"), (50, "busy 2/4"), (75, "busy 3/4"), (100, "busy 4/4")]


def test_demo_fails_at_the_requested_step(job: JobContext, progress: Progress) -> None:
    with pytest.raises(RuntimeError, match=r"demo failed at step 3 as asked \(fail_at=3\)"):
        demo(DemoParams(seconds=0, steps=5, fail_at=3), job)
    assert percents(progress) == [20, 40]


def test_demo_transient_failures_then_success(
    make_job: Callable[..., JobContext], progress: Progress
) -> None:
    params = DemoParams(seconds=0, steps=2, transient_failures=2)

    for attempt in (1, 2):
        with pytest.raises(TransientError, match=f"transient failure {attempt}/2"):
            demo(params, make_job(attempt=attempt))
    assert progress == [], "a transient failure happens before any work"

    assert demo(params, make_job(attempt=3))["attempt"] == 3


def test_demo_params_fail_at_beyond_steps_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        DemoParams(steps=3, fail_at=5)
    assert error_fields(exc.value) == {"fail_at"}
    assert "fail_at (5) must be <= steps (3)" in str(exc.value)


def test_demo_seconds_are_bounded_by_the_soft_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DemoParams(seconds=299).seconds == 299  # the default limit is 300 s
    with pytest.raises(ValidationError) as exc:
        DemoParams(seconds=300)
    assert error_fields(exc.value) == {"seconds"}
    assert "below the soft time limit of 300 s (STACK_TASK_SOFT_TIME_LIMIT)" in str(exc.value)
    monkeypatch.setattr("app.params.soft_time_limit", lambda: 900.0)
    assert DemoParams(seconds=600).seconds == 600  # read when validating: follows the setting


# --- params and registry --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "valid"),
    [
        (ImageParams, {}),
        (AnalyzeParams, {"image_data": png_base64(Image.new("RGB", (1, 1)))}),
        (ContentParams, {"text": "hello"}),
        (LogParams, {"event": "x"}),
        (DemoParams, {}),
    ],
)
def test_extra_fields_rejected(model: type[BaseModel], valid: dict[str, Any]) -> None:
    model.model_validate(valid)
    with pytest.raises(ValidationError) as exc:
        model.model_validate({**valid, "colour": "blue"})
    assert error_fields(exc.value) == {"colour"}
    assert exc.value.errors()[0]["type"] == "extra_forbidden"


def test_registry_has_the_five_kinds_on_their_queues() -> None:
    assert {kind.name: kind.queue for kind in registry} == {
        "generate_image": "content",
        "analyze_image": "default",
        "generate_content": "content",
        "write_log": "logs",
        "demo": "default",
    }
    assert {kind.name: kind.params for kind in registry} == {
        "generate_image": ImageParams,
        "analyze_image": AnalyzeParams,
        "generate_content": ContentParams,
        "write_log": LogParams,
        "demo": DemoParams,
    }
    assert registry.queues() == ["content", "default", "logs"]
