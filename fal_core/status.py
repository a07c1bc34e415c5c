"""A queued request's identity and state, as fal's queue reports them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import FieldError, InputError, ResponseError
from .redaction import excerpt

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"

NAMESPACES = ("workflows", "comfy")
# fal's request ids are UUIDs; anything else in an id could turn a URL or a file name into another.
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]+")


def check_request_id(request_id: object) -> str | None:
    """The problem with a request id, or None when it is safe in a URL path or a file name."""
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id) or len(request_id) > 128:
        return "a request id is letters, digits, '-' and '_' only (fal's are UUIDs)"
    return None


@dataclass(frozen=True)
class AppId:
    """An endpoint id split as fal's clients split it: ``[namespace/]owner/alias[/path]``."""

    owner: str
    alias: str
    path: str | None = None
    namespace: str | None = None

    @classmethod
    def parse(cls, endpoint_id: str) -> "AppId":
        parts = [p for p in endpoint_id.strip("/").split("/") if p]
        if len(parts) == 1:
            # Legacy ids "<numeric owner>-<alias>".
            match = re.match(r"^([0-9]+)-([a-zA-Z0-9-]+)$", parts[0])
            if match:
                parts = list(match.groups())
        namespace = parts.pop(0) if parts and parts[0] in NAMESPACES else None
        if len(parts) < 2:
            raise InputError([FieldError(
                "app_id", endpoint_id,
                "use the form owner/alias[/path], for example 'fal-ai/stable-diffusion-v3-medium/image-to-image'")])
        return cls(owner=parts[0], alias=parts[1], path="/".join(parts[2:]) or None, namespace=namespace)

    @property
    def full(self) -> str:
        """The id to submit to (with the sub-path)."""
        return "/".join(p for p in (self.namespace, self.owner, self.alias, self.path) if p)

    @property
    def base(self) -> str:
        """Where requests live: status, result and cancel drop the sub-path."""
        return "/".join(p for p in (self.namespace, self.owner, self.alias) if p)


@dataclass(frozen=True)
class RequestHandle:
    """A submitted request: its id and the URLs fal gave for it."""

    app_id: str
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str

    @classmethod
    def from_request_id(cls, queue_url: str, app_id: str, request_id: str) -> "RequestHandle":
        """Rebuild the URLs of a request known only by its id (for recovery)."""
        problem = check_request_id(request_id)
        if problem is not None:
            raise InputError([FieldError("request_id", request_id, problem)])
        base = f"{queue_url.rstrip('/')}/{AppId.parse(app_id).base}/requests/{request_id}"
        return cls(app_id, request_id, base + "/status", base, base + "/cancel")

    @classmethod
    def from_submit(cls, queue_url: str, app_id: str, data: Any) -> "RequestHandle":
        if not isinstance(data, Mapping) or not isinstance(data.get("request_id"), str):
            raise ResponseError(f"fal's answer to the submit to {app_id} has no request_id: {excerpt(data)}")
        if check_request_id(data["request_id"]) is not None:
            raise ResponseError(f"fal's answer to the submit to {app_id} has a request_id that is not an id: "
                                f"{excerpt(data['request_id'], 80)}; it was not used.")
        fallback = cls.from_request_id(queue_url, app_id, data["request_id"])

        def own(name: str, rebuilt: str) -> str:
            # A URL from the answer is followed only when it is the queue's: one pointing at another
            # host (an internal service) is replaced by the one rebuilt from the request id.
            given = data.get(name)
            if isinstance(given, str) and given.startswith(queue_url.rstrip("/") + "/") and "#" not in given:
                return given
            return rebuilt

        return cls(
            app_id=app_id,
            request_id=data["request_id"],
            status_url=own("status_url", fallback.status_url),
            response_url=own("response_url", fallback.response_url),
            cancel_url=own("cancel_url", fallback.cancel_url),
        )

    def to_json(self) -> dict[str, str]:
        return {"app_id": self.app_id, "request_id": self.request_id, "status_url": self.status_url,
                "response_url": self.response_url, "cancel_url": self.cancel_url}


@dataclass(frozen=True)
class LogLine:
    message: str
    level: str = "INFO"
    source: str = ""
    timestamp: str = ""

    @classmethod
    def parse(cls, data: Any) -> "LogLine":
        if isinstance(data, Mapping):
            return cls(str(data.get("message", "")), str(data.get("level") or "INFO"),
                       str(data.get("source") or ""), str(data.get("timestamp") or ""))
        return cls(str(data))


@dataclass(frozen=True)
class Status:
    """One status report. ``logs`` is None when they were not asked for."""

    state: str
    queue_position: int | None = None
    logs: tuple[LogLine, ...] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None

    @classmethod
    def parse(cls, data: Any) -> "Status":
        if not isinstance(data, Mapping) or data.get("status") not in (IN_QUEUE, IN_PROGRESS, COMPLETED):
            raise ResponseError(f"fal sent a status we do not know: {excerpt(data)}")
        logs = data.get("logs")
        return cls(
            state=data["status"],
            queue_position=data.get("queue_position"),
            logs=None if logs is None else tuple(LogLine.parse(item) for item in logs),
            metrics=dict(data.get("metrics") or {}),
            error=data.get("error"),
            error_type=data.get("error_type"),
        )

    @property
    def completed(self) -> bool:
        return self.state == COMPLETED
