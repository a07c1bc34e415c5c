"""The exceptions fal_core raises, one hierarchy rooted at :class:`FalError`.

Shaped after httpx's, and named as there: ``RequestError`` is what went wrong sending a request
or reading its answer (``TransportError`` below it), ``HTTPStatusError`` fal's error answers;
``JobError`` is how one queued job at fal ended badly. Callers catch the broad class they can act
on and read the attributes instead of parsing messages. Every message names what was wrong and
what to do; a plain ``ValueError`` or ``TypeError`` from fal_core is a bug in fal_core.

    FalError
    ├── ConfigError
    │   └── MissingKeyError
    ├── InputError                    bad input, caught before anything is sent
    ├── JournalError                  the request journal cannot be read or written
    ├── FileError                     an image or file that cannot be read, fetched or decoded
    ├── RequestError                  sending a request or reading its answer failed (as in httpx)
    │   ├── TransportError            the network failed, after retries
    │   │   └── SubmitUncertainError  a submit may have reached fal; it was not sent again
    │   └── ResponseError             fal answered 2xx with something we cannot read
    │       └── ResponseTooLarge      an answer, stream line or event over its size cap
    ├── HTTPStatusError               fal answered with an error status
    │   ├── AuthError                 401 / 403
    │   └── ValidationError           422, with every field path and message
    └── JobError                      how one queued job (a fal "request") ended badly
        ├── AppError                  the app ran and failed (COMPLETED with ``error``)
        ├── RequestTimeout            the overall timeout passed (the request was cancelled)
        ├── ResultError               fal completed the request but its result cannot be fetched
        └── ResultGoneError           fal completed (and billed) it but no longer keeps its result
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .redaction import redact, redact_value


class FalError(Exception):
    """Base class of every error fal_core raises. Its message never holds a key: whatever fal's
    answer echoed is redacted here, the one door every message goes through."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(FalError):
    """The client is configured in a way that cannot work."""


class MissingKeyError(ConfigError):
    def __init__(self, hint: str = "") -> None:
        message = (
            "No fal API key is configured: set the environment variable FAL_KEY to your key "
            "(the form is key_id:key_secret, from https://fal.ai/dashboard/keys), or FAL_KEY_ID "
            "and FAL_KEY_SECRET"
        )
        super().__init__(message + (f", {hint}" if hint else "") + ".")


@dataclass(frozen=True)
class FieldError:
    """One problem with one input field. ``str()`` reads as ``field=value: problem``."""

    field: str
    value: Any
    message: str

    def __str__(self) -> str:
        shown = redact(repr(self.value))
        if len(shown) > 80:
            shown = shown[:60] + "..." + shown[-12:]
        return f"{self.field}={shown}: {self.message}"


class InputError(FalError, ValueError):
    """Input that fails validation. Holds every problem found, not just the first."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        noun = "problem" if len(self.errors) == 1 else "problems"
        super().__init__(f"Invalid input ({len(self.errors)} {noun}); nothing was sent to fal:\n{lines}")


class JournalError(FalError):
    """The request journal cannot be read or written; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: Any, action: str, reason: str, consequence: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"The request journal {path} cannot be {action}: {reason}. {consequence} Free space on "
            "that disk or fix its permissions, or point FAL_JOURNAL at a writable file.")


class FileError(FalError):
    """An image or file that cannot be fetched, read or decoded."""


class RequestError(FalError):
    """Sending a request to fal or reading its answer failed (httpx's ``RequestError`` likewise)."""


class TransportError(RequestError):
    """The network failed, and retries did not help.

    ``maybe_delivered`` is true when the server may have received the request anyway (the body
    was sent before the failure); ``cause`` names the underlying failure.
    """

    def __init__(
        self, message: str, *, url: str | None = None, attempts: int = 1,
        maybe_delivered: bool = False, cause: str = "",
    ) -> None:
        self.url = None if url is None else redact(url)
        self.attempts = attempts
        self.maybe_delivered = maybe_delivered
        self.cause = redact(cause)
        super().__init__(message)


class SubmitUncertainError(TransportError):
    """A submit failed after its body was sent: fal may have accepted (and will charge) the job.

    It is never sent again automatically. ``fingerprint`` identifies the payload so that a
    journal can keep it until the user has checked.
    """

    DEFAULT_ADVICE = ("It was not sent again, so you cannot pay twice: check "
                      "https://fal.ai/dashboard/requests before running it again.")

    def __init__(self, app_id: str, cause: str, *, url: str, fingerprint: str | None = None,
                 request_id: str | None = None, advice: str | None = None) -> None:
        self.app_id = app_id
        self.fingerprint = fingerprint
        self.request_id = request_id
        super().__init__(
            f"The submit to {app_id} failed after the request was sent ({cause}). fal may have "
            "accepted the job and may charge for it, but its request id never reached us. "
            + (advice or self.DEFAULT_ADVICE),
            url=url,
            maybe_delivered=True,
            cause=cause,
        )


class HTTPStatusError(FalError):
    """fal answered with an error status. ``detail`` is fal's own explanation."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        detail: Any = None,
        url: str | None = None,
        request_id: str | None = None,
        error_type: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.detail = redact_value(detail)
        self.url = None if url is None else redact(url)
        self.request_id = None if request_id is None else redact(request_id)
        self.error_type = None if error_type is None else redact(error_type)
        super().__init__(message)


class AuthError(HTTPStatusError):
    """fal refused the key (401) or the key may not use this app (403)."""


class ValidationError(HTTPStatusError):
    """fal rejected the input (422). ``field_errors`` lists each field path and message."""

    def __init__(self, message: str, *, field_errors: Sequence[FieldError], **kwargs: Any) -> None:
        self.field_errors = list(field_errors)
        super().__init__(message, **kwargs)


class ResponseError(RequestError):
    """fal answered successfully with a body we cannot interpret."""


class ResponseTooLarge(ResponseError):
    """An answer (or a line or event of the status stream) over its cap, dropped unread."""


class JobError(FalError):
    """Something ended one queued job (a fal "request"). ``request_id`` names it for fal's dashboard."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        self.request_id = request_id
        super().__init__(message)


class AppError(JobError):
    """The app ran and reported a failure (status COMPLETED with ``error``)."""

    def __init__(self, message: str, *, request_id: str | None, error: str, error_type: str | None) -> None:
        self.error = redact(error) if isinstance(error, str) else error
        self.error_type = redact(error_type) if isinstance(error_type, str) else error_type
        super().__init__(message, request_id=request_id)


class RequestTimeout(JobError, TimeoutError):
    """The overall timeout passed while waiting; the request was cancelled at fal."""


class ResultError(JobError):
    """fal completed the request, but fetching its result failed for good (the reason is kept)."""


class ResultGoneError(JobError):
    """fal completed the request (and billed it) but no longer keeps its result.

    fal keeps a result 1 h after completion, 6 min when it is 10 KB or larger (``sync_mode``).
    It is never paid for again silently: only ``force_new_request`` sends a new request.
    """
