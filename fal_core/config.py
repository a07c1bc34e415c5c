"""Where fal lives and which key to use: base URLs and the API key, read from the environment.

The key is wrapped in :class:`Secret` the moment it is read, so that a repr, a log line, a
traceback's locals or an exception message can only ever show ``***``.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from . import redaction
from .errors import ConfigError, MissingKeyError
from .private_files import private_folder

DEFAULT_QUEUE_URL = "https://queue.fal.run"
DEFAULT_REST_URL = "https://rest.fal.ai"
DEFAULT_CDN_URL = "https://v3.fal.media"
# fal's Platform API (pricing, request history): same key, its own host.
DEFAULT_API_URL = "https://api.fal.ai/v1"

# fal's keys are "<key id>:<key secret>"; the id is a UUID-like token and the secret hex.
_KEY_FORM = re.compile(r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+$")


class Secret:
    """A string that never shows itself: ``repr``, ``str`` and formatting give ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        redaction.register(value)

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        """Replace every occurrence of the secret (or its halves), in any form, by ``***``."""
        return redaction.redact(text)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):
        raise TypeError("a Secret is not picklable: it would write the key out")


def check_key_form(key: str) -> str | None:
    """The problem with ``key``'s form, or None when it looks like a fal key."""
    if not key.strip():
        return "the key is empty"
    if not _KEY_FORM.fullmatch(key.strip()):
        return "a fal key has the form key_id:key_secret (two parts joined by ':', no spaces)"
    return None


def checked_key(key: str, where: str, fix: str) -> Secret:
    """``key`` as a Secret once it passes the settings dialog's form check, whatever its source.

    A key with a control character or a second line would otherwise reach an HTTP header, whose
    error prints part of it. The refusal names the source and never any part of the key.
    """
    problem = check_key_form(key)
    if problem is not None:
        raise ConfigError(f"The fal key from {where} is not usable: {problem}; its value is not shown. {fix}.")
    return Secret(key.strip())


_ENV_FIX = "Set it to the whole key (key_id:key_secret) from https://fal.ai/dashboard/keys"


def key_from_env(env: Mapping[str, str]) -> Secret | None:
    key = env.get("FAL_KEY", "").strip()
    if key:
        return checked_key(key, "FAL_KEY", _ENV_FIX)
    key_id, secret = env.get("FAL_KEY_ID", "").strip(), env.get("FAL_KEY_SECRET", "").strip()
    if key_id and secret:
        return checked_key(f"{key_id}:{secret}", "FAL_KEY_ID + FAL_KEY_SECRET", _ENV_FIX)
    return None


@dataclass(frozen=True)
class KeyFile:
    """The fal key stored alone in one file, readable by its owner only (ComfyUI's settings save it).

    It is written under a temporary name created with mode 0600 and then renamed over the old
    one, so that no reader ever sees a half-written key and the key never sits in a file that
    others can read, not even for a moment.
    """

    path: Path

    def read(self) -> Secret | None:
        try:
            key = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"Cannot read the fal key file {self.path}: {exc.strerror}. "
                              "Check its permissions.") from None
        if not key:
            return None
        return checked_key(key, f"the key file {self.path}", "It must hold the key alone, on one line: save the "
                           "key again (in ComfyUI: Settings > fal > fal API key) or delete the file")

    def save(self, key: str) -> None:
        private_folder(self.path.parent)
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(key + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def resolve_key(env: Mapping[str, str], key_file: Path | None) -> tuple[Secret | None, str | None]:
    """The key a run uses and where it comes from ("env" or "file"): the environment wins."""
    key = key_from_env(env)
    if key is not None:
        return key, "env"
    key = None if key_file is None else KeyFile(key_file).read()
    return key, None if key is None else "file"


@dataclass(frozen=True)
class FalConfig:
    """Base URLs and credentials. Every field can be set directly; ``from_env`` reads them.

    ``key_source`` says where the key came from ("env", "file", "argument") for status displays;
    ``key_place`` is how the host names the key file to its users (e.g. a settings dialog), so a
    refused key's message says where to replace it.
    """

    key: Secret | None = None
    queue_url: str = DEFAULT_QUEUE_URL
    rest_url: str = DEFAULT_REST_URL
    cdn_url: str = DEFAULT_CDN_URL
    api_url: str = DEFAULT_API_URL
    key_source: str | None = None
    missing_key_hint: str = field(default="", compare=False)
    key_place: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name in ("queue_url", "rest_url", "cdn_url", "api_url"):
            value = getattr(self, name)
            if not value.startswith(("http://", "https://")):
                raise ConfigError(
                    f"{name}={value!r}: a base URL must start with http:// or https://, "
                    f"for example {_DEFAULTS[name]!r}."
                )
            object.__setattr__(self, name, value.rstrip("/"))
        if self.key is not None:
            # Keys read from the environment or a file were checked there; this catches the rest.
            value = self.key if isinstance(self.key, str) else self.key.reveal()
            object.__setattr__(self, "key", checked_key(value, "the key given", "Pass the whole key "
                                                        "(key_id:key_secret) from https://fal.ai/dashboard/keys"))
        if isinstance(self.key, Secret) and self.key_source is None:
            object.__setattr__(self, "key_source", "argument")

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        key_file: Path | None = None,
        missing_key_hint: str = "",
        key_place: str = "",
        **overrides,
    ) -> "FalConfig":
        """Read FAL_KEY (or FAL_KEY_ID + FAL_KEY_SECRET) and FAL_QUEUE_URL / FAL_REST_URL /
        FAL_CDN_URL / FAL_API_URL. The environment's key wins over ``key_file``; ``overrides`` win over both."""
        env = os.environ if env is None else env
        key, source = resolve_key(env, key_file)
        values: dict[str, Any] = dict(
            key=key,
            key_source=source,
            queue_url=env.get("FAL_QUEUE_URL") or DEFAULT_QUEUE_URL,
            rest_url=env.get("FAL_REST_URL") or DEFAULT_REST_URL,
            cdn_url=env.get("FAL_CDN_URL") or DEFAULT_CDN_URL,
            api_url=env.get("FAL_API_URL") or DEFAULT_API_URL,
            missing_key_hint=missing_key_hint,
            key_place=key_place,
        )
        if overrides.get("key") is not None:
            values["key_source"] = "argument"
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes) -> "FalConfig":
        return replace(self, **changes)

    def authorization(self) -> str:
        """The Authorization header's value. Raises MissingKeyError when there is no key."""
        if self.key is None:
            raise MissingKeyError(self.missing_key_hint)
        return f"Key {self.key.reveal()}"

    def key_origin(self) -> tuple[str, str]:
        """Where the key came from and what to do about it, for the message of a refused key."""
        valid = "a valid key (key_id:key_secret) from https://fal.ai/dashboard/keys"
        place = self.key_place or "the key file"
        if self.key_source == "env":
            return ("the environment (FAL_KEY, or FAL_KEY_ID + FAL_KEY_SECRET)",
                    f"set FAL_KEY to {valid} and restart; while it is set it wins over {place}")
        if self.key_source == "file":
            return (place, f"enter {valid} in {place}")
        return ("the key given", f"use {valid}; without one, FAL_KEY is read")

    def redact(self, text: str) -> str:
        return self.key.redact(text) if self.key is not None else text

    def is_fal_host(self, url: str) -> bool:
        """Whether ``url`` is one of the configured fal APIs, the only hosts that get the key."""
        return any(url == base or url.startswith(base + "/")
                   for base in (self.queue_url, self.rest_url, self.api_url))


_DEFAULTS = {"queue_url": DEFAULT_QUEUE_URL, "rest_url": DEFAULT_REST_URL, "cdn_url": DEFAULT_CDN_URL,
             "api_url": DEFAULT_API_URL}
