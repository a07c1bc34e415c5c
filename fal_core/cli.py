"""``python -m fal_core``: run SD3 img2img, upload files, and inspect or recover requests.

Progress and logs go to stderr, results (file paths, URLs, JSON) to stdout, so the output can
be piped. Exit codes: 0 done, 1 fal or network error, 2 bad input, configuration or over the daily
budget, 130 stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import budget, schema, spend
from .client import FalClient
from .errors import ConfigError, FalError, InputError
from .files import fetch_bytes
from .images import decode_image, encode_png, extension, sniff_mime
from .img2img import img2img
from .deadline import Deadline
from .journal import COMPLETED, UNCERTAIN, Journal, ResultFiles
from .journaled import JournaledRequest
from .journal import default_path as default_journal_path
from .pricing import PriceCache
from .queue import Update
from .redaction import redact
from .status import AppId


def _print(text: object, *, file=None, flush: bool = False) -> None:
    """Every line the command line writes, to stdout or stderr: fal's answers may echo the key,
    so it is redacted first."""
    print(redact(str(text)), file=file or sys.stdout, flush=flush)


def _add_schema_options(parser: argparse.ArgumentParser) -> None:
    """One option per schema field, named after it, with its default and range in the help."""
    for spec in schema.SD3.fields.values():
        if spec.name in ("image_url", "prompt"):
            continue
        flag = "--" + spec.name.replace("_", "-")
        bounds = f" Between {spec.bounds()}." if spec.minimum is not None else ""
        default = "" if spec.default is None else f" fal's default: {spec.default!r}."
        help_text = f"{spec.description}{bounds}{default}"
        if spec.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif spec.name == "image_size":
            parser.add_argument(flag, default=None, metavar="PRESET|WxH",
                                help=f"{help_text} Presets: {', '.join(schema.IMAGE_SIZE_PRESETS)}.")
        else:
            parser.add_argument(flag, type=spec.type, default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fal_core",
        description="fal SD3 image-to-image from the command line. The key comes from FAL_KEY "
                    "(or FAL_KEY_ID + FAL_KEY_SECRET); FAL_QUEUE_URL, FAL_REST_URL, FAL_CDN_URL and "
                    "FAL_API_URL move the endpoints.",
    )
    parser.add_argument("--app-id", default=schema.ENDPOINT, help=f"fal endpoint (default {schema.ENDPOINT})")
    parser.add_argument("--timeout", type=float, default=None,
                        help="give up (and cancel at fal) after this many seconds")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    parser.add_argument("--journal", type=Path, default=None,
                        help="the request journal (default: FAL_JOURNAL, else "
                             "~/.local/state/comfyui-fal-sd3/journal.jsonl; ComfyUI's is "
                             "ComfyUI/user/fal_sd3/journal.jsonl)")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("img2img", help="transform an image file; writes the results as files")
    run.add_argument("image", help="input image: a file path, an http(s) URL or a data URI")
    run.add_argument("--prompt", "-p", required=True, help="what the image should show")
    _add_schema_options(run)
    run.add_argument("--output-dir", "-o", type=Path, default=Path("."), help="where result files go (default .)")
    run.add_argument("--upload", choices=("auto", "data_uri", "upload"), default="auto",
                     help="send the input inline as a data URI or upload it first (default: by size)")
    run.add_argument("--json", action="store_true", help="print fal's whole answer as JSON on stdout")
    run.add_argument("--force-new", action="store_true",
                     help="send a new (paid) request even when the journal has the same one running or done")

    upload = commands.add_parser("upload", help="upload files to fal storage; prints their URLs")
    upload.add_argument("files", nargs="+", type=Path)

    journal = commands.add_parser("journal", help="list recent requests, fetch one's result again, total the spend, "
                                                  "or resolve lost submits")
    journal.add_argument("--fetch", metavar="REQUEST_ID", help="fetch this request's result again")
    journal.add_argument("--spend", action="store_true",
                         help="what was paid (accepted submits; reused results cost nothing): today, 7 and 30 days")
    journal.add_argument("--resolve", action="store_true",
                         help="look each submit whose answer was lost up in fal's request history (once)")
    journal.add_argument("--output-dir", "-o", type=Path, default=None, help="with --fetch: save its images here")

    for name, text in (("status", "print a request's status and logs"),
                       ("result", "print a request's result; --output-dir also saves its images"),
                       ("cancel", "cancel a request")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("request_id")
        if name == "result":
            sub.add_argument("--output-dir", "-o", type=Path, default=None)
    return parser


class _Reporter:
    """Live progress on stderr: phase, queue position, fal's log lines, elapsed time."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.started = time.monotonic()

    def __call__(self, update: Update) -> None:
        if self.quiet:
            return
        where = f" at position {update.queue_position}" if update.queue_position is not None else ""
        rid = f" [{update.request_id}]" if update.request_id else ""
        self.say(f"{update.phase.replace('_', ' ')}{where}{rid}")
        for line in update.new_logs:
            self.say(f"  fal: {line.message}")

    def say(self, text: str) -> None:
        if not self.quiet:
            _print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=sys.stderr, flush=True)


def _read_image(source: str) -> str | bytes:
    if source.startswith(("http://", "https://", "data:")):
        return source
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError([schema.FieldError("image", source, f"cannot be read: {exc.strerror}")]) from None
    # PNG, JPEG and WebP go as they are; anything else Pillow reads is converted to PNG.
    return data if sniff_mime(data) else encode_png(decode_image(data, source=str(path)))


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params = {"prompt": args.prompt}
    for name in schema.FIELDS:
        value = getattr(args, name, None)
        if value is not None and name not in ("prompt", "image_url"):
            params[name] = value
    return params


def _file_stem(text: str) -> str:
    """A name that stays inside the output folder: a request id (from fal, the journal or the
    command line) is never taken as a path."""
    return re.sub(r"[^\w-]", "_", text)[:80] or "fal"


async def _save(fal: FalClient, urls: Sequence[str], out_dir: Path, stem: str,
                store: ResultFiles | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, url in enumerate(urls):
        data, mime = await fetch_bytes(fal.transport, url, what=f"result image {i + 1}", store=store)
        mime = sniff_mime(data) or (mime or "").split(";")[0]
        path = out_dir / f"{_file_stem(stem)}-{i}.{extension(mime)}"
        path.write_bytes(data)
        paths.append(path)
    return paths


def _list_journal(book: Journal) -> None:
    entries = book.entries()
    if not entries:
        _print(f"no requests in the last {book.retention / 3600:g} h in {book.path}", file=sys.stderr)
    for entry in entries:
        fields = entry.fields or {}
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.time))
        prompt = str(fields.get("prompt", ""))[:40]
        no_id = "(not sent)" if entry.state in ("preparing", "failed") else "(no id: answer lost)"
        _print(f"{when}  {entry.state:<9}  {entry.request_id or no_id:<36}  "
               f"seed={fields.get('seed')}  {prompt!r}")


async def _fetch_from_journal(fal: FalClient, book: Journal, request_id: str, out_dir: Path | None,
                              report: "_Reporter") -> None:
    entry = book.find_request(request_id)
    if entry is None or entry.handle is None:
        raise InputError([schema.FieldError("request_id", request_id, f"is not in the journal {book.path}")])
    output = entry.result if entry.state == COMPLETED else await fal.queue.result(entry.handle)
    _print(json.dumps(output, indent=2))
    if out_dir is not None:
        await _save_output(fal, output, request_id, out_dir, report, book.results)


async def _save_output(fal: FalClient, output: Any, request_id: str, out_dir: Path, report: "_Reporter",
                       store: ResultFiles | None = None) -> None:
    urls = [im.url for im in schema.Img2ImgOutput.from_json(output, request_id).images]
    for path in await _save(fal, urls, out_dir, f"fal-{request_id[:8]}", store):
        report.say(f"saved {path}")


def _check_budget(prices: PriceCache, book: Journal, app_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The run's price as the journal records it, after the daily budget
    (FAL_SD3_DAILY_BUDGET, or budget.json beside the journal) allowed it; None when unpriced."""
    price = prices.current(app_id)
    if price is None:
        return None
    amount = price.cost(params.get("num_images") or 1)
    budget.check(budget.read(book.path.parent / "budget.json"), spend.spent_today(book), amount, price.currency)
    return {"amount": round(amount, 6), "currency": price.currency, "source": price.source}


async def _resolve_journal(fal: FalClient, book: Journal) -> None:
    """One look in fal's request history for every submit whose answer was lost."""
    lost = [entry for entry in book.entries() if entry.state in UNCERTAIN]
    if not lost:
        _print(f"no submit with a lost answer in {book.path}", file=sys.stderr)
    for entry in lost:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.sent_at or entry.time))
        request = JournaledRequest(fal, book, entry.fingerprint, entry.app_id or schema.ENDPOINT,
                                   deadline=Deadline(None))
        try:
            completion = await request.resolve(entry)
        except FalError as exc:
            _print(f"{when}  still uncertain: {exc}")
            continue
        if completion is None:
            _print(f"{when}  not accepted by fal: a re-run sends it")
        else:
            _print(f"{when}  found: request {completion.handle.request_id}, its result is now in the journal")


async def _img2img(fal: FalClient, args: argparse.Namespace, book: Journal, report: _Reporter) -> None:
    AppId.parse(args.app_id)  # bad input: refused before the price is asked for
    image = _read_image(args.image)
    params = _params(args)
    prices = PriceCache(book.path.parent / "prices.json")
    cost = _check_budget(prices, book, args.app_id, params)
    # Once a day, fal's price is asked for while the job runs, for the next runs' records.
    refresh = asyncio.ensure_future(prices.refresh(fal.transport, args.app_id)) \
        if prices.needs_refresh(args.app_id) else None
    try:
        result = await img2img(fal, image, params, endpoint=schema.SD3.at(args.app_id), image_mode=args.upload,
                               on_update=report, timeout=args.timeout, decode=False, journal=book,
                               force_new=args.force_new, cost=cost)
    except BaseException:
        if refresh is not None:  # the run failed: the price can wait for the next one
            refresh.cancel()
            await asyncio.gather(refresh, return_exceptions=True)
        raise
    if refresh is not None:
        await refresh
    stem = f"{Path(args.image).stem if not isinstance(image, str) else 'fal'}-{result.handle.request_id[:8]}"
    paths = await _save(fal, [im.url for im in result.output.images], args.output_dir, stem, book.results)
    report.say(f"done: request {result.handle.request_id}, seed {result.output.seed}")
    for flagged, path in zip(result.output.has_nsfw_concepts, paths, strict=False):
        if flagged:
            report.say(f"warning: fal flagged {path} as NSFW")
    if args.json:
        _print(json.dumps({**result.raw, "request_id": result.handle.request_id}, indent=2))
    else:
        _print("\n".join(str(p) for p in paths))


async def _upload(fal: FalClient, args: argparse.Namespace, book: Journal, report: _Reporter) -> None:
    for path in args.files:
        data = path.read_bytes()
        mime = sniff_mime(data) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        _print(await fal.storage.upload(data, mime, file_name=path.name))


async def _journal(fal: FalClient, args: argparse.Namespace, book: Journal, report: _Reporter) -> None:
    if args.resolve:
        await _resolve_journal(fal, book)
    else:
        await _fetch_from_journal(fal, book, args.fetch, args.output_dir, report)


async def _status(fal: FalClient, args: argparse.Namespace, book: Journal, report: _Reporter) -> None:
    status = await fal.queue.status(fal.queue.handle(args.app_id, args.request_id), logs=True)
    _print(json.dumps({"request_id": args.request_id, "status": status.state,
                       "queue_position": status.queue_position, "error": status.error,
                       "error_type": status.error_type, "metrics": status.metrics}, indent=2))
    for line in status.logs or ():
        _print(f"{line.timestamp} {line.level} {line.message}", file=sys.stderr)


async def _result(fal: FalClient, args: argparse.Namespace, book: Journal, report: _Reporter) -> None:
    output = await fal.queue.result(fal.queue.handle(args.app_id, args.request_id))
    _print(json.dumps(output, indent=2))
    if args.output_dir is not None:
        await _save_output(fal, output, args.request_id, args.output_dir, report)


async def _cancel(fal: FalClient, args: argparse.Namespace, book: Journal, report: _Reporter) -> None:
    accepted = await fal.queue.cancel(fal.queue.handle(args.app_id, args.request_id))
    _print("cancellation requested" if accepted else "the request had already finished")


_COMMANDS = {"img2img": _img2img, "upload": _upload, "journal": _journal, "status": _status,
             "result": _result, "cancel": _cancel}


async def _main(args: argparse.Namespace) -> int:
    report = _Reporter(args.quiet)
    book = Journal(args.journal or default_journal_path())
    if args.command == "journal" and args.spend:
        _print(spend.table(spend.totals(book)))
        return 0
    if args.command == "journal" and not args.fetch and not args.resolve:
        _list_journal(book)
        return 0
    async with FalClient() as fal:
        await _COMMANDS[args.command](fal, args, book, report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        _print("stopped; a request that was running has been cancelled at fal", file=sys.stderr)
        return 130
    except (InputError, ConfigError, budget.BudgetExceeded) as exc:
        _print(f"error: {exc}", file=sys.stderr)
        return 2
    except FalError as exc:
        _print(f"error: {exc}", file=sys.stderr)
        return 1
