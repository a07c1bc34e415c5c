import random

import httpx

from comfyui_fal_sd3.fal_core import retry
from comfyui_fal_sd3.fal_core.status import AppId, RequestHandle


def resp(status, headers=None, text=""):
    return httpx.Response(status, headers=headers or {}, text=text)


def test_idempotent_calls_retry_on_transient_statuses_only():
    for status in (408, 409, 429, 500, 502, 503, 504):
        assert retry.should_retry_response(resp(status), idempotent=True)
    for status in (400, 401, 403, 404, 422):
        assert not retry.should_retry_response(resp(status), idempotent=True)


def test_submit_retries_only_where_fal_never_saw_it():
    assert retry.should_retry_response(resp(429), idempotent=False)
    assert retry.should_retry_response(resp(503, {"x-fal-request-id": "r"}), idempotent=False)
    assert retry.should_retry_response(resp(502, text="nginx"), idempotent=False)
    assert not retry.should_retry_response(resp(500, {"x-fal-request-id": "r"}), idempotent=False)
    assert not retry.should_retry_response(resp(408), idempotent=False)
    request = httpx.Request("POST", "http://x")
    assert retry.should_retry_exception(httpx.ConnectError("refused", request=request), idempotent=False)
    for exc in (httpx.ReadTimeout("t", request=request), httpx.RemoteProtocolError("drop", request=request),
                httpx.WriteError("w", request=request)):
        assert not retry.should_retry_exception(exc, idempotent=False)
        assert retry.should_retry_exception(exc, idempotent=True)
    assert not retry.should_retry_exception(httpx.UnsupportedProtocol("ftp"), idempotent=True)


def test_backoff_grows_is_capped_and_honours_retry_after():
    policy = retry.RetryPolicy(base=0.1, cap=1.0)
    rng = random.Random(1)
    delays = [policy.delay(n, rng=rng) for n in range(1, 8)]
    assert all(0.05 <= d <= 1.0 for d in delays)
    assert delays[-1] > delays[0]
    assert policy.delay(1, retry_after=7) == 7
    assert policy.delay(1, retry_after=10_000) == policy.retry_after_cap
    assert retry.retry_after_seconds(resp(429, {"Retry-After": "2"})) == 2.0
    assert 0 <= retry.retry_after_seconds(resp(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) < 1


def test_app_ids_split_like_fals_clients():
    app = AppId.parse("fal-ai/stable-diffusion-v3-medium/image-to-image")
    assert (app.owner, app.alias, app.path, app.namespace) == (
        "fal-ai", "stable-diffusion-v3-medium", "image-to-image", None)
    assert app.base == "fal-ai/stable-diffusion-v3-medium"
    assert AppId.parse("workflows/me/flow/x/y").base == "workflows/me/flow"
    assert AppId.parse("123-my-app").full == "123/my-app"
    handle = RequestHandle.from_request_id("https://q", "comfy/o/a/p", "r1")
    assert handle.status_url == "https://q/comfy/o/a/requests/r1/status"
    assert handle.cancel_url == "https://q/comfy/o/a/requests/r1/cancel"
