"""A few KB of PNG that claims 13000x13000 pixels: refused at submit with a 422 naming the limit,
from its header alone, and refused again by the handler before it decodes a pixel."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFile
from pydantic import ValidationError

from app.images import analyze_image
from app.params import AnalyzeParams, ImageTooLarge
from stack.api.app import create_app
from stack.config import get_settings
from stack.jobs.migrate import upgrade
from stack.jobs.registry import JobContext
from stack.runtime import build_runtime
from tests.unit.conftest import make_settings


def png_base64(size: tuple[int, int], mode: str = "1") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")  # one colour: deflate makes it tiny
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def bomb() -> str:
    data = png_base64((13000, 13000))
    assert len(data) < 50_000  # 169 M pixels in a body far below any body limit
    return data


@pytest.fixture(autouse=True)
def settings_from_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test reads STACK_MAX_IMAGE_PIXELS afresh, and Pillow's global is restored after."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any pixel decoding fails the test: the checks must work from the header alone."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"decoded a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def only_error(exc: ValidationError) -> str:
    [error] = exc.errors()
    assert error["loc"] == ("image_data",)
    return str(error["msg"])


def test_a_bomb_is_refused_at_validation_from_its_header(bomb: str, no_decoding: None) -> None:
    with pytest.raises(ValidationError) as info:
        AnalyzeParams(image_data=bomb)
    message = only_error(info.value)
    assert "169,000,000" in message and "40,000,000" in message and "STACK_MAX_IMAGE_PIXELS" in message
    assert Image.MAX_IMAGE_PIXELS == 40_000_000  # Pillow's own guard follows the setting


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_the_limit_comes_from_the_setting(monkeypatch: pytest.MonkeyPatch, no_decoding: None) -> None:
    monkeypatch.setenv("STACK_MAX_IMAGE_PIXELS", "10000")
    assert AnalyzeParams(image_data=png_base64((100, 100), "RGB"))  # exactly the limit
    with pytest.raises(ValidationError) as info:
        AnalyzeParams(image_data=png_base64((101, 100), "RGB"))
    # Under twice the limit Pillow only warns: our own check names the size.
    assert "101x100 = 10,100 pixels" in only_error(info.value) and "10,000" in only_error(info.value)
    with pytest.raises(ValidationError) as info:
        AnalyzeParams(image_data=png_base64((1000, 1000)))
    # Past twice the limit Pillow refuses in open(); the message still names the limit and the setting.
    assert "1,000,000 pixels" in only_error(info.value)
    assert "10,000 (STACK_MAX_IMAGE_PIXELS)" in only_error(info.value)


def test_a_limit_above_pillows_default_is_honoured(monkeypatch: pytest.MonkeyPatch, bomb: str) -> None:
    # Pillow alone refuses past 179 M pixels; an operator who allows 200 M gets 200 M.
    monkeypatch.setenv("STACK_MAX_IMAGE_PIXELS", "200000000")
    assert AnalyzeParams(image_data=bomb)


def test_the_handler_refuses_before_decoding(bomb: str, tmp_path: Path, no_decoding: None) -> None:
    # Params validated elsewhere (a job queued under a higher limit): the handler checks again.
    params = AnalyzeParams.model_construct(image_data=bomb, top_colours=5)
    job = JobContext(id="j", kind="analyze_image", attempt=1, storage_dir=tmp_path, progress=lambda *a: None)
    with pytest.raises(ImageTooLarge, match=r"169,000,000 pixels.*40,000,000 \(STACK_MAX_IMAGE_PIXELS\)"):
        analyze_image(params, job)


def test_the_api_answers_a_bomb_with_422_and_creates_no_job(tmp_path: Path, bomb: str) -> None:
    settings = make_settings(tmp_path)
    upgrade(build_runtime(settings).engine)
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/jobs/analyze_image", json={"image_data": bomb})
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"][-1] == "image_data"
        assert "40,000,000" in error["msg"] and "STACK_MAX_IMAGE_PIXELS" in error["msg"]
        assert client.get("/api/jobs").json()["count"] == 0
