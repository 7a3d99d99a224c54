"""The official `openai` SDK, unchanged, against the real service (tiny engine)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import openai
import pytest
from api_support import FAST, TOKEN, FakeTranslate
from PIL import Image


def sdk(url: str, key: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.mark.slow
def test_sdk_generates_two_png_images_from_a_japanese_prompt(
    live: Callable[..., str], translate_ok: FakeTranslate
) -> None:
    url = live(translation="on", translate_project="demo", translate_endpoint=translate_ok.url)
    result = sdk(url).images.generate(
        prompt="テディベアがバタフライで泳いでいる",
        n=2,
        size="256x256",  # type: ignore[arg-type]
        response_format="b64_json",
        model="tiny",  # the served model (another id is a 400)
        extra_body={**FAST, "seed": 7},
    )
    assert result.created > 0
    assert len(result.data or []) == 2
    pixels = []
    for item in result.data or []:
        # the English drawn: the translation, cut where the tiny model's short text
        # context (a few tokens; GLIDE reads 128) ends, and said so
        assert item.revised_prompt == "A teddy bear swimming the"
        assert (item.model_extra or {})["prompt_truncated"] is True
        png = base64.b64decode(item.b64_json or "")
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG"
        assert image.size == (256, 256)
        assert image.mode == "RGB"
        pixels.append(image.tobytes())
    assert pixels[0] != pixels[1]  # seeds 7 and 8 draw different images
    assert translate_ok.requests[0]["contents"] == ["テディベアがバタフライで泳いでいる"]


def test_sdk_maps_our_errors_to_its_exceptions(live: Callable[..., str]) -> None:
    url = live()
    with pytest.raises(openai.AuthenticationError):
        sdk(url, key="wrong-token-0123456789").images.generate(prompt="a cat")
    with pytest.raises(openai.BadRequestError) as bad:
        sdk(url).images.generate(prompt="a cat", n=9)
    assert bad.value.param == "n"  # type: ignore[attr-defined]
    assert "n:" in bad.value.message
    with pytest.raises(openai.BadRequestError, match="response_format"):
        sdk(url).images.generate(prompt="a cat", response_format="url")
    with pytest.raises(openai.BadRequestError, match="draws with 'tiny'") as wrong:
        sdk(url).images.generate(prompt="a cat", model="dall-e-3")
    assert wrong.value.code == "model_not_found"


def test_translation_failure_is_a_424_the_sdk_does_not_retry(
    live: Callable[..., str], translate_ok: FakeTranslate
) -> None:
    url = live(translation="on", translate_project="demo", translate_endpoint=translate_ok.url)
    translate_ok.fail = True
    # the SDK's own default: 2 retries for 408, 409, 429 and 5xx; none for 424
    retrying = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, timeout=120)
    with pytest.raises(openai.APIStatusError) as err:
        retrying.images.generate(prompt="猫", extra_body=FAST)
    assert err.value.status_code == 424
    assert err.value.code == "translation_failed"  # type: ignore[attr-defined]
    assert "Cloud Translation failed" in err.value.message
    assert len(translate_ok.requests) == 1  # asked once, not three times
    # English needs no translation and still works while the API is down
    ok = sdk(url).images.generate(prompt="a cat", size="64x64", extra_body={"steps": 2})  # type: ignore[arg-type]
    assert ok.data
    assert ok.data[0].revised_prompt == "a cat"


def test_sdk_lists_the_model(live: Callable[..., str]) -> None:
    models = sdk(live()).models.list()
    assert [m.id for m in models.data] == ["tiny"]
