"""fal_core's queue client against the emulator: what it sends, what it returns, how it fails."""

import asyncio
import time

import numpy as np
import pytest

from comfyui_fal_sd3.fal_core import FalClient, RetryPolicy, SyncFalClient, img2img
from comfyui_fal_sd3.fal_core.errors import (
    AppError, AuthError, HTTPStatusError, InputError, RequestTimeout,
    SubmitUncertainError, ValidationError,
)
from comfyui_fal_sd3.fal_core.images import encode_png, to_data_uri
from comfyui_fal_sd3.fal_core.schema import ENDPOINT
from fal_emulator import expected_output

FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05)


def picture(h=64, w=80, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1) % 256
    return np.clip(base + rng.integers(0, 20, base.shape), 0, 255).astype(np.uint8)


def payload(image=None, **extra):
    uri = to_data_uri(encode_png(picture() if image is None else image), "image/png")
    return {"image_url": uri, "prompt": "a cat", **extra}


def client(emu, **kwargs):
    return FalClient(key=emu.key, queue_url=emu.queue_url, rest_url=emu.rest_url, cdn_url=emu.cdn_url,
                     api_url=emu.api_url,
                     retry=kwargs.pop("retry", FAST), **kwargs)


def run(coro):
    return asyncio.run(coro)


def test_subscribe_streams_to_completion_with_three_requests(fal_emulator):
    fal_emulator.job_seconds = 0.3
    updates = []

    async def go():
        async with client(fal_emulator) as fal:
            return await fal.queue.subscribe(ENDPOINT, payload(), on_update=updates.append)

    start = time.monotonic()
    done = run(go())
    elapsed = time.monotonic() - start
    assert done.status.completed and done.output["images"]
    assert [fal_emulator.count(k) for k in ("submit", "stream", "status", "result")] == [1, 1, 0, 1]
    assert elapsed < 0.3 + 0.25
    phases = [u.phase for u in updates]
    assert phases[-1] == "completed" and "in_progress" in phases
    logs = [line.message for u in updates for line in u.new_logs]
    assert logs and len(logs) == len(set(logs))  # every log line reported once
    submit = fal_emulator.calls("submit")[0]
    assert submit.headers["authorization"] == f"Key {fal_emulator.key}"


def test_result_pixels_round_trip(fal_emulator):
    image = picture()

    async def go():
        async with client(fal_emulator) as fal:
            return await img2img(fal, image, {"prompt": "x", "num_images": 2, "image_size": "square"})

    result = run(go())
    assert len(result.images) == 2
    for k, out in enumerate(result.images):
        assert np.array_equal(out, expected_output(image, k, (512, 512)))


def test_validation_happens_before_any_network_call(fal_emulator):
    async def go():
        async with client(fal_emulator) as fal:
            await img2img(fal, picture(), {"prompt": "", "num_inference_steps": 0, "strength": 3})

    with pytest.raises(InputError) as info:
        run(go())
    assert {e.field for e in info.value.errors} == {"prompt", "num_inference_steps", "strength"}
    assert fal_emulator.calls() == []


def test_stream_refused_falls_back_to_polling(fal_emulator):
    fal_emulator.job_seconds = 0.3
    fal_emulator.fault("stream", refuse=True)

    async def go():
        async with client(fal_emulator, poll_interval=0.05) as fal:
            return await fal.queue.subscribe(ENDPOINT, payload())

    assert run(go()).output["images"]
    assert fal_emulator.count("stream") == 1 and fal_emulator.count("status") >= 2


def test_stream_drop_reconnects_and_completes(fal_emulator):
    fal_emulator.job_seconds = 0.3
    fal_emulator.fault("stream", drop_mid=True)

    async def go():
        async with client(fal_emulator) as fal:
            return await fal.queue.subscribe(ENDPOINT, payload())

    assert run(go()).status.completed
    assert fal_emulator.count("stream") == 2 and fal_emulator.count("submit") == 1


def test_429_with_retry_after_is_honoured_on_submit(fal_emulator):
    fal_emulator.fault("submit", status=429, retry_after=0.3)

    async def go():
        async with client(fal_emulator) as fal:
            return await fal.queue.submit(ENDPOINT, payload())

    start = time.monotonic()
    handle = run(go())
    assert time.monotonic() - start >= 0.3
    assert handle.request_id in fal_emulator.jobs
    assert fal_emulator.count("submit") == 2 and len(fal_emulator.jobs) == 1


@pytest.mark.parametrize("fault", [
    dict(status=429, retry_after=0.01), dict(status=502), dict(status=503), dict(status=503, request_id_header=True),
], ids=["429", "502 from nginx", "503", "503 with a request id"])
def test_submit_is_sent_again_only_when_fal_surely_refused_it(fal_emulator, fault):
    fal_emulator.fault("submit", **fault)

    async def go():
        async with client(fal_emulator) as fal:
            return await fal.queue.submit(ENDPOINT, payload())

    handle = run(go())
    assert fal_emulator.count("submit") == 2 and list(fal_emulator.jobs) == [handle.request_id]


@pytest.mark.parametrize("fault", [
    dict(status=504, accept=True), dict(status=524, accept=True, body="A timeout occurred"),
    dict(status=500, accept=True, request_id_header=True), dict(status=500, accept=True),
    dict(status=504, request_id_header=True, headers={"X-Fal-Request-Timeout-Type": "user"}),
], ids=["504 gateway timeout", "524", "500 from the app", "500 from nginx", "504 user timeout"])
def test_submit_answered_after_fal_read_it_is_uncertain_never_resent(fal_emulator, fault):
    fal_emulator.fault("submit", **fault)

    async def go():
        async with client(fal_emulator) as fal:
            return await fal.queue.submit(ENDPOINT, payload(), fingerprint="fp2")

    with pytest.raises(SubmitUncertainError) as info:
        run(go())
    assert fal_emulator.count("submit") == 1
    assert f"HTTP {fault['status']}" in str(info.value) and info.value.fingerprint == "fp2"


def test_submit_refusals_that_persist_are_plain_errors(fal_emulator):
    fal_emulator.fault("submit", status=503, times=4)

    async def go():
        async with client(fal_emulator) as fal:
            return await fal.queue.submit(ENDPOINT, payload())

    with pytest.raises(HTTPStatusError) as info:
        run(go())
    assert info.value.status_code == 503 and not isinstance(info.value, SubmitUncertainError)
    assert fal_emulator.count("submit") == 4 and not fal_emulator.jobs


def test_2xx_submit_without_request_id_uses_the_header_or_is_uncertain(fal_emulator):
    async def go():
        async with client(fal_emulator) as fal:
            return await fal.queue.submit(ENDPOINT, payload())

    fal_emulator.fault("submit", hide_request_id=True, request_id_header=True)
    handle = run(go())
    assert list(fal_emulator.jobs) == [handle.request_id]
    assert handle.status_url.endswith(f"/requests/{handle.request_id}/status")
    fal_emulator.fault("submit", hide_request_id=True)
    with pytest.raises(SubmitUncertainError, match="HTTP 200 without a request id"):
        run(go())
    assert fal_emulator.count("submit") == 2 and len(fal_emulator.jobs) == 2


def test_lost_submit_answer_is_never_sent_again(fal_emulator):
    fal_emulator.fault("submit", drop="after")

    async def go():
        async with client(fal_emulator) as fal:
            return await fal.queue.submit(ENDPOINT, payload(), fingerprint="fp1")

    with pytest.raises(SubmitUncertainError) as info:
        run(go())
    assert fal_emulator.count("submit") == 1 and len(fal_emulator.jobs) == 1
    text = str(info.value)
    assert "may have accepted" in text and "not sent again" in text
    assert info.value.fingerprint == "fp1"


def test_submit_dropped_before_reaching_the_app_is_not_retried_either(fal_emulator):
    # From the client's side a drop before and after processing look the same: ambiguous.
    fal_emulator.fault("submit", drop="before")

    async def go():
        async with client(fal_emulator) as fal:
            return await fal.queue.submit(ENDPOINT, payload())

    with pytest.raises(SubmitUncertainError):
        run(go())
    assert fal_emulator.count("submit") == 1


def test_idempotent_calls_retry_through_drops_and_5xx(fal_emulator):
    fal_emulator.job_seconds = 0.05
    fal_emulator.fault("result", status=503, request_id_header=True)
    fal_emulator.fault("result", drop="before")

    async def go():
        async with client(fal_emulator) as fal:
            return await fal.queue.subscribe(ENDPOINT, payload())

    assert run(go()).output["images"]
    assert fal_emulator.count("result") == 3


def test_slow_answer_times_out_and_is_retried(fal_emulator):
    fal_emulator.job_seconds = 0.05
    fal_emulator.fault("result", delay=1.0)

    async def go():
        async with client(fal_emulator, timeout=0.3) as fal:
            return await fal.queue.subscribe(ENDPOINT, payload())

    assert run(go()).output["images"]
    assert fal_emulator.count("result") == 2


def test_auth_error_says_how_to_set_the_key(fal_emulator):
    async def go():
        async with FalClient(key="wrong:key-value-123456", queue_url=fal_emulator.queue_url,
                             rest_url=fal_emulator.rest_url, cdn_url=fal_emulator.cdn_url) as fal:
            await fal.queue.submit(ENDPOINT, payload())

    with pytest.raises(AuthError) as info:
        run(go())
    assert "FAL_KEY" in str(info.value) and info.value.status_code == 401
    assert "key-value-123456" not in str(info.value)


def test_fal_validation_errors_list_every_field(fal_emulator):
    async def go():
        async with client(fal_emulator) as fal:
            # Sent raw, past our own validation, to see fal's 422 mapped.
            await fal.queue.submit(ENDPOINT, {"image_url": "https://elsewhere.example/x.png",
                                              "num_inference_steps": 99})

    with pytest.raises(ValidationError) as info:
        run(go())
    fields = {e.field for e in info.value.field_errors}
    assert {"prompt", "num_inference_steps", "image_url"} <= fields
    assert "num_inference_steps" in str(info.value)


def test_app_failure_names_the_request(fal_emulator):
    fal_emulator.next_job(job_seconds=0.05, fail="CUDA out of memory", error_type="RuntimeError")

    async def go():
        async with client(fal_emulator) as fal:
            await fal.queue.subscribe(ENDPOINT, payload())

    with pytest.raises(AppError) as info:
        run(go())
    request_id = next(iter(fal_emulator.jobs))
    assert info.value.request_id == request_id and request_id in str(info.value)
    assert "CUDA out of memory" in str(info.value)


def test_overall_timeout_cancels_at_fal(fal_emulator):
    fal_emulator.job_seconds = 5

    async def go():
        async with client(fal_emulator) as fal:
            await fal.queue.subscribe(ENDPOINT, payload(), timeout=0.3)

    start = time.monotonic()
    with pytest.raises(RequestTimeout) as info:
        run(go())
    assert time.monotonic() - start < 1.5
    assert fal_emulator.count("cancel") == 1
    assert info.value.request_id in str(info.value)


def test_cancelling_the_task_cancels_at_fal(fal_emulator):
    fal_emulator.job_seconds = 5

    async def go():
        async with client(fal_emulator) as fal:
            task = asyncio.ensure_future(fal.queue.subscribe(ENDPOINT, payload()))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return time.monotonic()

    stopped_at = run(go())
    assert fal_emulator.count("cancel") == 1
    cancel = fal_emulator.calls("cancel")[0]
    assert cancel.method == "PUT" and stopped_at - cancel.time < 0.5


def test_submit_options_reach_fal(fal_emulator):
    async def go():
        async with client(fal_emulator) as fal:
            await fal.queue.submit(ENDPOINT, payload(), webhook_url="https://hook.example/x",
                                   runner_hint="r1", priority="low", start_timeout=30)

    run(go())
    call = fal_emulator.calls("submit")[0]
    assert call.query["fal_webhook"] == "https://hook.example/x"
    assert call.headers["x-fal-runner-hint"] == "r1"
    assert call.headers["x-fal-queue-priority"] == "low"
    assert float(call.headers["x-fal-request-timeout"]) == 30


def test_status_result_and_cancel_by_request_id(fal_emulator):
    fal_emulator.job_seconds = 5

    async def go():
        async with client(fal_emulator) as fal:
            handle = await fal.queue.submit(ENDPOINT, payload())
            again = fal.queue.handle(ENDPOINT, handle.request_id)
            status = await fal.queue.status(again)
            cancelled = await fal.queue.cancel(again)
            return status, cancelled

    status, cancelled = run(go())
    assert status.state in ("IN_QUEUE", "IN_PROGRESS") and cancelled is True


def test_sync_face(fal_emulator):
    fal_emulator.job_seconds = 0.05
    with SyncFalClient(key=fal_emulator.key, queue_url=fal_emulator.queue_url, rest_url=fal_emulator.rest_url,
                       cdn_url=fal_emulator.cdn_url) as fal:
        done = fal.queue.subscribe(ENDPOINT, payload())
        statuses = list(fal.queue.stream_status(done.handle))
        result = fal.run(img2img, picture(), {"prompt": "x"})
    assert done.output["images"] and statuses[-1].completed
    assert np.array_equal(result.images[0], expected_output(picture(), 0, None))
