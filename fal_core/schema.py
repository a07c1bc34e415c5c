"""An image-to-image endpoint as one value (:class:`Endpoint`), and SD3's: ``SD3``, the request
and response of ``fal-ai/stable-diffusion-v3-medium/image-to-image``.

Taken from fal's page for the endpoint (types, defaults, enums). fal publishes no ranges; where a
bound is ours it says why. Nodes and the command line read defaults and ranges from the endpoint's
fields instead of copying them, so a change here reaches every front end.

Validation collects every problem before anything is sent, so a user fixes a graph in one go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping

from .errors import FieldError, InputError, ResponseError
from .redaction import excerpt

ENDPOINT = "fal-ai/stable-diffusion-v3-medium/image-to-image"

# fal's presets, (width, height).
IMAGE_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}

# A custom side below 64 px gives SD3 a latent of 4x4 patches or fewer; above 3072 px the latent
# outgrows SD3's positional embedding (pos_embed_max_size 192 x patch 2 x VAE factor 8).
MIN_SIDE = 64
MAX_SIDE = 3072
# Per picture of a result: SD3 makes no more, so a result claiming more is refused before decoding.
MAX_RESULT_PIXELS = MAX_SIDE * MAX_SIDE
SEED_MAX = 2**32 - 1  # fal documents no seed range; SD3 pipelines seed 32-bit generators.



def seed_for_item(seed: int | None, index: int) -> int | None:
    """Item ``index`` of a batch uses ``seed + index`` (wrapping inside the seed range), so a batch
    is not B copies of one picture; the local node follows the same rule."""
    return None if seed is None else (seed + index) % (SEED_MAX + 1)


@dataclass(frozen=True)
class Field:
    """One input field: its JSON type, default and range as the front ends show them."""

    name: str
    type: type
    default: Any
    description: str
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    multiline: bool = False

    def bounds(self) -> str:
        """The range as people read it: "1 and 50", "0.01 and 1"."""
        show = (lambda v: str(int(v))) if self.type is int else (lambda v: f"{v:g}")
        return f"{show(self.minimum)} and {show(self.maximum)}"


# In the order the fal node shows them (its saved workflows hold widget values in this order).
FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("image_url", str, None, "The image to transform: a URL or a data URI.", required=True),
        Field("prompt", str, "", "What the image should show.", required=True, multiline=True),
        Field("negative_prompt", str, "", "What the image should not show.", multiline=True),
        Field("prompt_expansion", bool, False, "Let fal upsample the prompt with more details."),
        Field("image_size", object, None, "Output size: a preset or {width, height}; default: the input's size."),
        # fal gives no range; published copies of the schema say 1-50.
        Field("num_inference_steps", int, 28, "Denoising steps.", minimum=1, maximum=50, step=1),
        Field("seed", int, None, "Same seed, prompt and input give the same image.",
              minimum=0, maximum=SEED_MAX, step=1),
        # Published copies say 1-20 or 0-20; below 1 SD3 runs without guidance, so 0-20 is valid.
        Field("guidance_scale", float, 5.0, "How closely to follow the prompt (CFG).",
              minimum=0.0, maximum=20.0, step=0.1),
        # Published copies say 1-4.
        Field("num_images", int, 1, "Images to generate for each input image.", minimum=1, maximum=4, step=1),
        Field("enable_safety_checker", bool, True, "Let fal flag NSFW results."),
        # 0 would run no denoising step at all (diffusers fails on it); 0.01 is the least useful change.
        Field("strength", float, 0.9, "How far to move from the input image (1 = ignore it).",
              minimum=0.01, maximum=1.0, step=0.01),
        Field("sync_mode", bool, False, "Return the images inline as data URIs instead of CDN URLs."),
    )
}


@dataclass(frozen=True)
class ImageSize:
    """A preset name, or a custom width and height."""

    preset: str | None = None
    width: int | None = None
    height: int | None = None

    @classmethod
    def parse(cls, value: Any, field_name: str = "image_size") -> "ImageSize":
        """From a preset name, ``{"width", "height"}``, ``"WxH"`` or an ImageSize."""
        if isinstance(value, ImageSize):
            return value
        if isinstance(value, str):
            text = value.strip().lower()
            if text in IMAGE_SIZE_PRESETS:
                return cls(preset=text)
            if "x" in text:
                w, _, h = text.partition("x")
                if w.strip().isdigit() and h.strip().isdigit():
                    return cls(width=int(w), height=int(h))
        elif isinstance(value, Mapping) and set(value) == {"width", "height"}:
            return cls(width=value["width"], height=value["height"])
        kind = "" if isinstance(value, (str, Mapping)) else f" (got {type(value).__name__})"
        raise InputError(
            [FieldError(field_name, value, f"use one of {', '.join(IMAGE_SIZE_PRESETS)}, "
                        f"{{'width': W, 'height': H}} or 'WxH'{kind}")]
        )

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        if self.preset is not None:
            return IMAGE_SIZE_PRESETS[self.preset]
        if self.width is None or self.height is None:
            raise InputError(self.problems())
        return (int(self.width), int(self.height))

    def problems(self, field_name: str = "image_size") -> list[FieldError]:
        if self.preset is not None:
            return [] if self.preset in IMAGE_SIZE_PRESETS else [
                FieldError(field_name, self.preset, f"use one of {', '.join(IMAGE_SIZE_PRESETS)}")]
        errors = []
        for name in ("width", "height"):
            value = getattr(self, name)
            if not _is_int(value):
                errors.append(FieldError(f"{field_name}.{name}", value, "must be a whole number"))
            elif not MIN_SIDE <= value <= MAX_SIDE:
                errors.append(FieldError(f"{field_name}.{name}", value,
                                         f"must be between {MIN_SIDE} and {MAX_SIDE} pixels"))
        return errors

    def to_json(self) -> str | dict[str, int]:
        if self.preset is not None:
            return self.preset
        width, height = self.dimensions
        return {"width": width, "height": height}

    def __str__(self) -> str:
        w, h = self.dimensions
        return f"{self.preset} ({w}x{h})" if self.preset else f"{w}x{h}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_field(spec: Field, value: Any) -> FieldError | None:
    name = spec.name
    if spec.type is bool:
        return None if isinstance(value, bool) else FieldError(name, value, "must be true or false")
    if spec.type is str:
        if not isinstance(value, str):
            return FieldError(name, value, "must be text")
        if spec.required and not value.strip():
            return FieldError(name, value, "must not be empty")
        return None
    if spec.type is int:
        if not _is_int(value):
            return FieldError(name, value, "must be a whole number")
    elif spec.type is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return FieldError(name, value, "must be a number")
    if spec.minimum is not None and not spec.minimum <= value <= spec.maximum:
        return FieldError(name, value, f"must be between {spec.bounds()}")
    return None


_IMAGE_URL_SCHEMES = ("http://", "https://")


def image_url_problem(value: Any) -> str | None:
    """Why ``value`` cannot be sent as ``image_url``, or None: fal fetches http(s) URLs and reads
    data:image/ URIs; a file path, file://, javascript: or anything else is never sent."""
    if not isinstance(value, str):
        return "must be text: an http(s):// URL or a data:image/... URI"
    text = value.strip()
    lower = text.lower()
    if lower.startswith(_IMAGE_URL_SCHEMES):
        rest = text.split("://", 1)[1]
        return None if rest and not rest.startswith("/") and not any(c.isspace() for c in text) else \
            "is not a whole URL: http(s)://host/path, with no spaces"
    if lower.startswith("data:image/") and "," in text:
        return None
    return ("use an http:// or https:// URL or a data:image/... URI; file paths, file://, javascript: and "
            "other kinds are not sent (give a local picture as an IMAGE, or upload it first)")


def input_size_problem(width: int, height: int, field_name: str = "image", *,
                       sides: tuple[int, int] = (MIN_SIDE, MAX_SIDE), maker: str = "SD3") -> FieldError | None:
    """With no image_size the result keeps the input's size: SD3 takes sides of 64 to 3072 px."""
    low, high = sides
    if low <= width <= high and low <= height <= high:
        return None
    return FieldError(field_name, f"{width}x{height}", (
        f"is {width}x{height} pixels and no image_size is set, so the result would keep that size, but {maker} "
        f"makes sides of {low} to {high} pixels: set image_size (in ComfyUI, connect SD3 Image Size) "
        "or resize the picture"))


def validate(payload: Mapping[str, Any], *, input_size: tuple[int, int] | None = None,
             endpoint: "Endpoint | None" = None, picture_given: bool = False) -> dict[str, Any]:
    """Check a payload against ``endpoint``'s fields (SD3's by default) and return it as fal
    should receive it.

    Unknown fields, missing required ones, wrong types and out-of-range values are all collected
    into one :class:`InputError`. ``None`` means "not set" and is left out of the result.
    ``input_size`` (width, height) is the input picture's, when known: without an image_size, it
    must be one SD3 can make. ``picture_given``: the picture comes as pixels or bytes, and gets its
    ``image_url`` (a data URI or an upload) only after validation, so the payload has none.
    """
    endpoint = SD3 if endpoint is None else endpoint
    fields = endpoint.fields
    errors: list[FieldError] = []
    clean: dict[str, Any] = {}
    if input_size is not None and payload.get("image_size") is None:
        problem = input_size_problem(*input_size, sides=endpoint.sides, maker=endpoint.label)
        if problem is not None:
            errors.append(problem)
    for name, value in payload.items():
        spec = fields.get(name)
        if spec is None:
            errors.append(FieldError(name, value,
                                     f"is not a field of {endpoint.app_id}; known fields: {', '.join(fields)}"))
            continue
        if value is None:
            continue
        checked, problems = _checked(spec, value)
        errors.extend(problems)
        if not problems:
            clean[name] = checked
    for spec in fields.values():
        if spec.required and payload.get(spec.name) is None and not (picture_given and spec.name == "image_url"):
            errors.append(FieldError(spec.name, None, "is required"))
    if errors:
        raise InputError(errors)
    return clean


def _checked(spec: Field, value: Any) -> tuple[Any, list[FieldError]]:
    """One set field's value as fal should receive it, and its problems (none when it is valid)."""
    if spec.name == "image_url":
        problem_text = image_url_problem(value)
        if problem_text is not None:
            return None, [FieldError(spec.name, value, problem_text)]
        return value.strip(), []
    if spec.name == "image_size":
        try:
            size = ImageSize.parse(value)
        except InputError as exc:
            return None, exc.errors
        problems = size.problems()
        return (None if problems else size.to_json()), problems
    problem = _check_field(spec, value)
    if problem is not None:
        return None, [problem]
    return (float(value) if spec.type is float else value), []


@dataclass(frozen=True)
class OutputImage:
    url: str
    width: int | None = None
    height: int | None = None
    content_type: str = "image/jpeg"


@dataclass(frozen=True)
class Img2ImgOutput:
    """fal's answer. Fields fal adds later are kept in ``extra`` rather than rejected."""

    images: list[OutputImage]
    seed: int | None = None
    has_nsfw_concepts: list[bool] = field(default_factory=list)
    prompt: str | None = None
    num_images: int | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, request_id: str | None = None, max_images: int | None = None) -> "Img2ImgOutput":
        """fal's answer, read. More than ``max_images`` pictures (by default the most a request can
        ask for) is refused before any of them is fetched."""
        where = f" (request {request_id})" if request_id else ""
        if not isinstance(data, Mapping) or not isinstance(data.get("images"), list):
            raise ResponseError(f"fal's result{where} has no 'images' list; it starts: {excerpt(data)}")
        limit = int(FIELDS["num_images"].maximum or 1) if max_images is None else max_images
        if len(data["images"]) > limit:
            raise ResponseError(f"fal's result{where} has {len(data['images'])} images, but {limit} "
                                f"{'was' if limit == 1 else 'were'} asked for; none of them was downloaded.")
        images = []
        for i, item in enumerate(data["images"]):
            if not isinstance(item, Mapping) or not isinstance(item.get("url"), str):
                raise ResponseError(f"fal's result{where}: images[{i}] has no 'url': {excerpt(item)}")
            images.append(OutputImage(
                url=item["url"], width=item.get("width"), height=item.get("height"),
                content_type=item.get("content_type") or "image/jpeg",
            ))
        flags = data.get("has_nsfw_concepts") or []
        known = {"images", "seed", "has_nsfw_concepts", "prompt", "num_images", "timings"}
        return cls(
            images=images,
            seed=data.get("seed"),
            has_nsfw_concepts=[bool(f) for f in flags],
            prompt=data.get("prompt"),
            num_images=data.get("num_images"),
            timings=dict(data.get("timings") or {}),
            extra={k: v for k, v in data.items() if k not in known},
        )


# fal's answer, read: (data, request id, most pictures it may hold) -> the output.
OutputParser = Callable[[Any, "str | None", "int | None"], Img2ImgOutput]


@dataclass(frozen=True)
class Endpoint:
    """One fal image-to-image endpoint: everything that differs from one to the next.

    ``fields`` are its inputs (``image_url`` among them); ``output`` reads its answer;
    ``published_price`` (unit price, unit, currency), from its model page, stands in when fal's
    pricing API gives none; ``sides`` is the range of a side of a picture it makes, which an input
    picture must fit without an image_size. The queue, uploads, the journal and the nodes take it
    as it is.
    """

    app_id: str
    fields: Mapping[str, Field]
    output: OutputParser = Img2ImgOutput.from_json
    published_price: tuple[float, str, str] | None = None
    sides: tuple[int, int] = (MIN_SIDE, MAX_SIDE)
    name: str = ""

    @property
    def label(self) -> str:
        """What messages call it."""
        return self.name or self.app_id

    @classmethod
    def of(cls, app_id: str, fields: Iterable[Field], **options: Any) -> "Endpoint":
        """An endpoint from its fields in the order the front ends show them."""
        return cls(app_id, {f.name: f for f in fields}, **options)

    def at(self, app_id: str) -> "Endpoint":
        """The same endpoint under another id (an alias, a private deployment of the same app)."""
        return replace(self, app_id=app_id)

    def validate(self, payload: Mapping[str, Any], *, input_size: tuple[int, int] | None = None,
                 picture_given: bool = False) -> dict[str, Any]:
        return validate(payload, input_size=input_size, endpoint=self, picture_given=picture_given)

    @property
    def max_images(self) -> int:
        """The most pictures one request may ask for (1 when the endpoint has no num_images)."""
        spec = self.fields.get("num_images")
        return int(spec.maximum) if spec is not None and spec.maximum is not None else 1

    def read_output(self, data: Any, request_id: str | None = None, max_images: int | None = None) -> Img2ImgOutput:
        return self.output(data, request_id, self.max_images if max_images is None else max_images)


# fal's model page lists SD3 medium at $0.035 per image; the pricing API may not answer every key.
SD3 = Endpoint(ENDPOINT, FIELDS, published_price=(0.035, "image", "USD"), name="SD3")
