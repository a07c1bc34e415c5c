"""The exception hierarchy reads as httpx's, and fal_core's bad input is always a FalError."""

import asyncio

import numpy as np
import pytest

from comfyui_fal_sd3.fal_core import FalClient
from comfyui_fal_sd3.fal_core.errors import (
    AppError, FalError, InputError, JobError, RequestError, RequestTimeout, ResponseError,
    ResponseTooLarge, ResultError, ResultGoneError, SubmitUncertainError, TransportError,
)
from comfyui_fal_sd3.fal_core.images import encode, encode_jpeg, encode_png
from comfyui_fal_sd3.fal_core.status import AppId


def test_request_error_is_the_parent_of_transport_errors_as_in_httpx():
    for cls in (TransportError, SubmitUncertainError, ResponseError, ResponseTooLarge):
        assert issubclass(cls, RequestError)
    # How a queued job ended is not a failure to send or read a request.
    for cls in (AppError, RequestTimeout, ResultError, ResultGoneError):
        assert issubclass(cls, JobError) and not issubclass(cls, RequestError)


@pytest.mark.parametrize("call, field", [
    (lambda: AppId.parse("bad"), "app_id='bad'"),
    (lambda: encode_png(np.zeros((4, 4, 3), np.float32)), "image='array of float32'"),
    (lambda: encode_png(np.zeros((4, 4, 7), np.uint8)), "image='array of shape (4, 4, 7)'"),
    (lambda: encode_jpeg(np.zeros((4, 4, 4), np.uint8)), "image_format='jpeg': JPEG has no alpha"),
    (lambda: encode(np.zeros((4, 4, 3), np.uint8), "gif"), "image_format='gif'"),
])
def test_bad_input_is_an_input_error_naming_the_field(call, field):
    with pytest.raises(InputError) as refused:
        call()
    assert isinstance(refused.value, FalError) and field in str(refused.value)


def test_bad_submit_and_upload_options_are_input_errors_before_any_call(fal_emulator):
    async def main():
        async with FalClient(key=fal_emulator.key, queue_url=fal_emulator.queue_url,
                             rest_url=fal_emulator.rest_url, cdn_url=fal_emulator.cdn_url) as fal:
            problems = []
            for call in (lambda: fal.queue.submit("fal-ai/x/y", {}, priority="urgent"),
                         lambda: fal.queue.submit("fal-ai/x/y", {}, start_timeout=0.5),
                         lambda: fal.queue.submit("bad", {}),
                         lambda: fal.storage.image_url(b"x", "image/png", mode="ftp")):
                with pytest.raises(InputError) as refused:
                    await call()
                problems.append(str(refused.value))
            return problems

    problems = asyncio.run(main())
    assert ["priority='urgent'" in problems[0], "start_timeout=0.5" in problems[1], "app_id='bad'" in problems[2],
            "mode='ftp'" in problems[3]] == [True] * 4
    assert fal_emulator.calls() == []
