"""fal_core: fal's queue protocol, the SD3 image-to-image schema, images and uploads.

No ComfyUI and no torch: usable from any Python program (``python -m fal_core --help``).

Names are imported on first use: ComfyUI imports every node pack at start-up, and the nodes need
only the schema then, not httpx or the image codecs.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "client": ["FalClient"],
    "sync": ["SyncFalClient"],
    "config": ["FalConfig", "Secret"],
    "retry": ["RetryPolicy"],
    "queue": ["QueueClient", "Completion", "Update"],
    "storage": ["Storage", "UploadCache"],
    "status": ["RequestHandle", "Status"],
    "schema": ["ENDPOINT", "FIELDS", "ImageSize", "Img2ImgOutput"],
    "img2img": ["Img2ImgResult", "img2img", "img2img_batch"],
    "pricing": ["Price", "PriceCache"],
    "budget": ["Budget", "BudgetExceeded"],
    "recovery": ["Recovered", "recover"],
    "errors": [
        "FalError", "ConfigError", "MissingKeyError", "InputError", "FieldError", "FileError",
        "TransportError", "SubmitUncertainError", "HTTPStatusError", "AuthError", "ValidationError",
        "ResponseError", "ResponseTooLarge", "RequestError", "JobError", "AppError", "RequestTimeout",
        "RequestCancelled", "JournalError", "ResultError", "ResultGoneError",
    ],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["__version__", *_MODULE_OF]


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
