"""fal_core: fal's queue protocol, the SD3 image-to-image schema, images and uploads.

No ComfyUI and no torch: usable from any Python program (``python -m fal_core --help``).

Names are imported on first use: ComfyUI imports every node pack at start-up, and the nodes need
only the schema then, not httpx or the image codecs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Which module holds each public name, for the imports on first use below.
_EXPORTS = {
    "client": ["FalClient"],
    "sync": ["SyncFalClient"],
    "config": ["FalConfig", "Secret"],
    "retry": ["RetryPolicy"],
    "queue": ["QueueClient", "Completion", "Update", "OnUpdate"],
    "phase": ["Phase"],
    "storage": ["Storage", "UploadCache"],
    "status": ["RequestHandle", "Status"],
    "schema": ["ENDPOINT", "FIELDS", "SD3", "Endpoint", "Field", "ImageSize", "Img2ImgOutput"],
    "img2img": ["ImageInput", "Img2ImgResult", "img2img", "img2img_batch"],
    "journal": ["Journal", "ResultFiles"],
    "pricing": ["Price", "PriceCache"],
    "budget": ["Budget", "BudgetExceeded"],
    "recovery": ["Recovered", "recover"],
    "errors": [
        "FalError", "ConfigError", "MissingKeyError", "InputError", "FieldError", "FileError",
        "RequestError", "TransportError", "SubmitUncertainError", "ResponseError", "ResponseTooLarge",
        "HTTPStatusError", "AuthError", "ValidationError", "JournalError",
        "JobError", "AppError", "RequestTimeout", "ResultError", "ResultGoneError",
    ],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

# Written out for type checkers, editors and linters, which read neither _EXPORTS nor __getattr__;
# tests/test_package.py checks that the three lists name the same things.
__all__ = [
    "__version__",
    "FalClient", "SyncFalClient", "FalConfig", "Secret", "RetryPolicy",
    "QueueClient", "Completion", "Update", "OnUpdate", "Phase", "Storage", "UploadCache", "RequestHandle", "Status",
    "ENDPOINT", "FIELDS", "SD3", "Endpoint", "Field", "ImageSize", "Img2ImgOutput",
    "ImageInput", "Img2ImgResult", "img2img", "img2img_batch", "Journal", "ResultFiles",
    "Price", "PriceCache", "Budget", "BudgetExceeded", "Recovered", "recover",
    "FalError", "ConfigError", "MissingKeyError", "InputError", "FieldError", "FileError",
    "RequestError", "TransportError", "SubmitUncertainError", "ResponseError", "ResponseTooLarge",
    "HTTPStatusError", "AuthError", "ValidationError", "JournalError",
    "JobError", "AppError", "RequestTimeout", "ResultError", "ResultGoneError",
]

if TYPE_CHECKING:
    from .budget import Budget, BudgetExceeded
    from .client import FalClient
    from .config import FalConfig, Secret
    from .errors import (
        AppError, AuthError, ConfigError, FalError, FieldError, FileError, HTTPStatusError, InputError, JobError,
        JournalError, MissingKeyError, RequestError, RequestTimeout, ResponseError,
        ResponseTooLarge, ResultError, ResultGoneError, SubmitUncertainError, TransportError, ValidationError,
    )
    from .img2img import ImageInput, Img2ImgResult, img2img, img2img_batch
    from .journal import Journal, ResultFiles
    from .phase import Phase
    from .pricing import Price, PriceCache
    from .queue import Completion, OnUpdate, QueueClient, Update
    from .recovery import Recovered, recover
    from .retry import RetryPolicy
    from .schema import ENDPOINT, FIELDS, SD3, Endpoint, Field, ImageSize, Img2ImgOutput
    from .status import RequestHandle, Status
    from .storage import Storage, UploadCache
    from .sync import SyncFalClient


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
