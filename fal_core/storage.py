"""fal storage: uploads to fal's CDN (multipart for big files), the fallback upload path, a
content-hash cache so the same bytes are uploaded once, and the choice between an inline data
URI and an upload.

The CDN path is what fal's clients use by default: a short-lived token from the REST API, then
the bytes to the CDN. When it fails for a reason other than the key, the older
initiate-then-PUT path is tried before giving up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import AuthError, FieldError, HTTPStatusError, InputError, ResponseError, TransportError
from .images import extension, to_data_uri
from .private_files import private_folder
from .redaction import excerpt
from .retry import RetryPolicy
from .transport import Transport

# fal's docs warn that data URIs slow large requests. Up to this size inlining saves the upload's
# round trips; above it an upload (cached by content, so a re-run costs nothing) wins.
INLINE_LIMIT = 1024 * 1024
# fal's clients switch to multipart above 100 MiB, in 10 MiB parts.
MULTIPART_THRESHOLD = 100 * 1024 * 1024
MULTIPART_CHUNK = 10 * 1024 * 1024
MULTIPART_CONCURRENCY = 4
# The CDN path gets two tries: past them the fallback path is a better bet than more waiting.
CDN_RETRY = RetryPolicy(attempts=2, base=0.25, cap=1.0)
# Refresh the CDN token this long before fal says it expires.
TOKEN_MARGIN = 60.0
UPLOAD_TTL = 24 * 3600.0



class UploadCache:
    """Content hash -> uploaded URL, kept for ``ttl`` seconds.

    With a ``path`` the entries survive restarts (a JSON file, replaced atomically, so a reader
    never sees half a file); without one they live as long as the object.
    """

    def __init__(self, path: Path | None = None, ttl: float = UPLOAD_TTL) -> None:
        self.path = path
        self.ttl = ttl
        self._entries: dict[str, tuple[str, float]] | None = None

    def _load(self) -> dict[str, tuple[str, float]]:
        if self._entries is None:
            self._entries = {}
            if self.path is not None:
                try:
                    raw = json.loads(self.path.read_text(encoding="utf-8"))
                    self._entries = {k: (v[0], float(v[1])) for k, v in raw.items()}
                except (OSError, ValueError, TypeError, IndexError, AttributeError):
                    # A missing or damaged cache only costs re-uploads.
                    self._entries = {}
        return self._entries

    def get(self, digest: str) -> str | None:
        entry = self._load().get(digest)
        if entry is None or time.time() - entry[1] > self.ttl:
            return None
        return entry[0]

    def put(self, digest: str, url: str) -> None:
        now = time.time()
        entries = {k: v for k, v in self._load().items() if now - v[1] <= self.ttl}
        entries[digest] = (url, now)
        self._entries = entries
        if self.path is not None:
            private_folder(self.path.parent)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".uploads-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({k: list(v) for k, v in entries.items()}, f)
            os.replace(tmp, self.path)


@dataclass(frozen=True)
class _Token:
    header: str
    base_url: str
    expires: float


class Storage:
    def __init__(self, transport: Transport, cache: UploadCache | None = None) -> None:
        self.transport = transport
        self.cache = cache if cache is not None else UploadCache()
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()
        self._pending: dict[str, asyncio.Future] = {}

    async def upload(self, data: bytes, content_type: str, file_name: str | None = None) -> str:
        """Upload ``data`` and return its public URL; the same bytes are uploaded only once."""
        digest = f"{hashlib.sha256(data).hexdigest()}:{content_type}"
        cached = self.cache.get(digest)
        if cached is not None:
            return cached
        # Concurrent uploads of the same bytes (a batch of one image) share one transfer.
        if digest in self._pending:
            return await asyncio.shield(self._pending[digest])
        future = asyncio.get_running_loop().create_future()
        self._pending[digest] = future
        try:
            name = file_name or f"{digest[:16]}.{extension(content_type)}"
            url = await self._upload(data, content_type, name)
            self.cache.put(digest, url)
            future.set_result(url)
            return url
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so a future nobody awaited does not warn
            raise
        finally:
            del self._pending[digest]

    async def image_url(self, data: bytes, content_type: str, *, mode: str = "auto",
                        inline_limit: int = INLINE_LIMIT) -> str:
        """A URL fal can read the image from: a data URI (``mode`` "data_uri", or "auto" for
        small files) or an upload ("upload", or "auto" above ``inline_limit`` bytes)."""
        if mode not in ("auto", "data_uri", "upload"):
            raise InputError([FieldError("mode", mode, "use 'auto', 'data_uri' or 'upload'")])
        if mode == "data_uri" or (mode == "auto" and len(data) <= inline_limit):
            return to_data_uri(data, content_type)
        return await self.upload(data, content_type)

    async def _upload(self, data: bytes, content_type: str, name: str) -> str:
        try:
            if len(data) > MULTIPART_THRESHOLD:
                return await self._upload_multipart(data, content_type, name)
            return await self._upload_cdn(data, content_type, name)
        except AuthError:
            raise
        except (HTTPStatusError, TransportError, ResponseError):
            self._token = None
            return await self._upload_initiate(data, content_type, name)

    async def _cdn_token(self) -> _Token:
        async with self._token_lock:
            if self._token is None or self._token.expires - TOKEN_MARGIN < time.time():
                config = self.transport.config
                response = await self.transport.request(
                    "POST", f"{config.rest_url}/storage/auth/token", what="CDN upload token",
                    params={"storage_type": "fal-cdn-v3"}, json={})
                body = _json_object(response.content, "CDN upload token")
                try:
                    self._token = _Token(
                        header=f"{body.get('token_type', 'Bearer')} {body['token']}",
                        base_url=str(body.get("base_url") or config.cdn_url).rstrip("/"),
                        expires=_timestamp(body.get("expires_at")),
                    )
                except KeyError:
                    raise ResponseError("fal's CDN token answer has no 'token'.") from None
            return self._token

    async def _upload_cdn(self, data: bytes, content_type: str, name: str) -> str:
        token = await self._cdn_token()
        response = await self.transport.request(
            "POST", f"{self.transport.config.cdn_url}/files/upload", what=f"upload of {name}", content=data,
            retry=CDN_RETRY,
            headers={"Authorization": token.header, "Content-Type": content_type, "X-Fal-File-Name": name})
        return _field(response.content, "access_url", f"upload of {name}")

    async def _upload_multipart(self, data: bytes, content_type: str, name: str) -> str:
        token = await self._cdn_token()
        auth = {"Authorization": token.header}
        what = f"multipart upload of {name}"
        response = await self.transport.request(
            "POST", f"{token.base_url}/files/upload/multipart", what=what,
            headers={**auth, "Content-Type": content_type, "X-Fal-File-Name": name})
        body = _json_object(response.content, what)
        access_url, upload_id = body.get("access_url"), body.get("uploadId")
        if not access_url or not upload_id:
            raise ResponseError(f"fal's answer to the {what} lacks access_url or uploadId.")
        limit = asyncio.Semaphore(MULTIPART_CONCURRENCY)

        async def part(number: int, offset: int) -> dict:
            async with limit:
                r = await self.transport.request(
                    "PUT", f"{access_url}/multipart/{upload_id}/{number}", what=f"part {number} of {name}",
                    content=data[offset:offset + MULTIPART_CHUNK],
                    headers={**auth, "Content-Type": content_type, "Accept-Encoding": "identity"})
                etag = r.headers.get("etag")
                if not etag:
                    raise ResponseError(f"fal's answer to part {number} of {name} has no ETag.")
                return {"partNumber": number, "etag": etag}

        parts = await asyncio.gather(*(part(i + 1, off) for i, off in enumerate(range(0, len(data), MULTIPART_CHUNK))))
        await self.transport.request("POST", f"{access_url}/multipart/{upload_id}/complete", what=what,
                                     headers=auth, json={"parts": list(parts)})
        return access_url

    async def _upload_initiate(self, data: bytes, content_type: str, name: str) -> str:
        what = f"upload of {name} (fallback path)"
        response = await self.transport.request(
            "POST", f"{self.transport.config.rest_url}/storage/upload/initiate", what=what,
            params={"storage_type": "gcs"}, json={"file_name": name, "content_type": content_type})
        body = _json_object(response.content, what)
        if not body.get("upload_url") or not body.get("file_url"):
            raise ResponseError(f"fal's answer to the {what} lacks upload_url or file_url.")
        await self.transport.request("PUT", body["upload_url"], what=what, content=data,
                                     headers={"Content-Type": content_type})
        return body["file_url"]


def _json_object(content: bytes, what: str) -> dict:
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ResponseError(f"fal's answer to the {what} is not a JSON object: "
                            f"{excerpt(content.decode('utf-8', 'replace'))}")
    return body


def _field(content: bytes, name: str, what: str) -> str:
    value = _json_object(content, what).get(name)
    if not isinstance(value, str) or not value:
        raise ResponseError(f"fal's answer to the {what} has no {name!r}.")
    return value


def _timestamp(value: object) -> float:
    """Seconds since the epoch of fal's ``expires_at``; unknown means "refresh in 10 minutes"."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time() + 600.0
