"""`scribe`: serve the API, or score / route / list prototypes from the command line.

`score` and `route` run the pipeline in this process (loading the models once), or talk to a
running service when `--url` (or SCRIBE_URL) is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from scribe_client.errors import RewardServiceError
from scribe_client.protocol import RouteRequest, RouteResponse, ScoreRequest, ScoreResponse
from scribe_service.auth import is_loopback
from scribe_service.errors import ServiceError
from scribe_service.evaluation.cli import add_eval_parser
from scribe_service.library import LibraryError, load_library
from scribe_service.library_build.cli import add_library_parser
from scribe_service.settings import Settings

console = Console()
stderr = Console(stderr=True)
_REQUEST_FIELDS = set(ScoreRequest.model_fields)
ScoreFn = Callable[[ScoreRequest], Awaitable[ScoreResponse]]

# `scribe score` exit statuses. A script must not mistake a run with unjudged trajectories for
# a clean one; partial trajectories get their own status so a caller can choose to accept them.
EXIT_OK = 0
EXIT_FAILED = 1
"""Some trajectory failed (no step judged) or its request was refused or could not be sent."""
EXIT_USAGE = 2
"""Bad arguments, an unreadable input file, an unusable record or library."""
EXIT_PARTIAL = 3
"""No trajectory failed, but some are partial: some of their steps could not be judged."""


def request_from_record(record: dict[str, Any], line: int) -> ScoreRequest:
    """A ScoreRequest line, or a trajectory record of ../shared/data (id, task, messages, …)."""
    if set(record) <= _REQUEST_FIELDS:
        payload = record
    elif "messages" in record:
        payload = {"messages": record["messages"], "tools": record.get("tools")}
        payload["request_id"] = str(record.get("id", f"line-{line}"))
    else:
        raise ValueError(f"line {line}: neither a score request nor a trajectory record")
    if payload.get("request_id") is None:
        payload = {**payload, "request_id": f"line-{line}"}
    return ScoreRequest.model_validate(payload)


def read_requests(path: Path, limit: int | None) -> Iterator[ScoreRequest]:
    with path.open(encoding="utf-8") as handle:
        count = 0
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            if limit is not None and count >= limit:
                return
            yield request_from_record(json.loads(text), number)
            count += 1


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_score(response: ScoreResponse) -> None:
    table = Table(
        title=f"{response.request_id}: reward {_fmt(response.reward)} "
        f"(process {_fmt(response.process_reward)}, {response.status})",
        title_justify="left",
    )
    for column in ("#", "msg", "prototype", "sim", "score", "failure modes / error", "subgoal"):
        table.add_column(column, overflow="fold")
    for step in response.steps:
        detail = ", ".join(step.failure_modes) if step.error is None else step.error.type
        table.add_row(
            str(step.index),
            "-" if step.message_index is None else str(step.message_index),
            step.prototype_id + (" (fallback)" if step.fallback else ""),
            f"{step.similarity:.2f}",
            "-" if step.score is None else str(step.score),
            detail,
            step.subgoal[:80],
        )
    console.print(table)


def print_route(response: RouteResponse) -> None:
    table = Table(title=f"library {response.library_version}", title_justify="left")
    for column in ("#", "span", "prototype", "sim", "subgoal"):
        table.add_column(column, overflow="fold")
    for step in response.steps:
        span = "-" if step.char_span is None else f"{step.char_span[0]}-{step.char_span[1]}"
        prototype = step.prototype_id + (" (fallback)" if step.fallback else "")
        table.add_row(str(step.index), span, prototype, f"{step.similarity:.2f}", step.subgoal)
    console.print(table)


async def _score_file(args: argparse.Namespace) -> int:
    requests = list(read_requests(args.file, args.limit))
    out = args.out.open("w", encoding="utf-8") if args.out else None
    outcomes: Counter[str] = Counter()
    try:
        async with _Scorer(args) as score:
            with Progress(console=console, disable=len(requests) < 3 or args.quiet) as progress:
                task = progress.add_task("scoring", total=len(requests))
                for request in requests:
                    outcomes[await _score_one(score, request, out, args.quiet)] += 1
                    progress.advance(task)
    finally:
        if out:
            out.close()
    stderr.print(
        f"{len(requests)} trajectories: {outcomes['ok']} ok, {outcomes['partial']} partial, "
        f"{outcomes['failed']} failed, {outcomes['error']} not scored (request error)",
        soft_wrap=True,
    )
    return score_exit_code(outcomes)


async def _score_one(score: ScoreFn, request: ScoreRequest, out: TextIO | None, quiet: bool) -> str:
    """The response's status, or `error` when the request itself was refused or not sent (an
    input limit, overload, the judge down, the service unreachable): the rest still run."""
    try:
        response = await score(request)
    except (ServiceError, RewardServiceError) as exc:
        stderr.print(f"[red]error:[/red] {escape(f'{request.request_id}: {exc}')}", soft_wrap=True)
        return "error"
    if out:
        out.write(response.model_dump_json() + "\n")
    if not quiet:
        print_score(response)
    return response.status


def score_exit_code(outcomes: Counter[str]) -> int:
    """The exit status of a `score` run from its count of each status (and `error`)."""
    if outcomes["failed"] or outcomes["error"]:
        return EXIT_FAILED
    return EXIT_PARTIAL if outcomes["partial"] else EXIT_OK


class _Scorer:
    """An async context giving `score(request)`: in-process pipeline, or a remote service."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._url = args.url or os.environ.get("SCRIBE_URL")
        self._client: Any = None
        self._pipeline: Any = None

    async def __aenter__(self) -> Any:
        if self._url:
            from scribe_client import AsyncRewardClient

            self._client = AsyncRewardClient(self._url)
            return self._client.score
        from scribe_service.app import build_pipeline

        console.print("loading models…")
        self._pipeline = await build_pipeline(Settings())
        return self._pipeline.score

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._pipeline is not None and self._pipeline.judge is not None:
            await self._pipeline.judge.backend.aclose()


async def _route_text(args: argparse.Namespace) -> int:
    request = RouteRequest(completion=args.text, prompt=args.prompt)
    url = args.url or os.environ.get("SCRIBE_URL")
    if url:
        from scribe_client import AsyncRewardClient

        async with AsyncRewardClient(url) as client:
            response = await client.route(request)
    else:
        from scribe_service.app import build_pipeline

        pipeline = await build_pipeline(Settings(), with_judge=False)
        response = await pipeline.route(request)
    print_route(response)
    return 0


def _prototypes(_: argparse.Namespace) -> int:
    library = load_library(Settings().prototypes_dir)
    table = Table(title=f"library {library.version}", title_justify="left")
    table.add_column("id", no_wrap=True)
    for column in ("domain", "name", "exemplars", "failure modes"):
        table.add_column(column, overflow="fold")
    for p in library.prototypes.values():
        name = p.name + (" (fallback)" if p.fallback else "")
        table.add_row(p.id, p.domain, name, str(len(p.exemplars)), str(len(p.failure_modes)))
    console.print(table)
    return 0


def _export_embedder(_: argparse.Namespace) -> int:
    """Build the configured embedder and store the library's exemplar vectors, as a start
    would, so that an image or an init container starts without exporting or encoding."""
    from scribe_service.app import configured_embedder
    from scribe_service.pipeline.embed import EmbeddingError
    from scribe_service.pipeline.embed_onnx import OnnxEmbedder
    from scribe_service.pipeline.embed_store import stored
    from scribe_service.pipeline.library_state import index_library

    settings = Settings()
    library = load_library(settings.prototypes_dir)
    try:
        embedder = configured_embedder(settings)
        index_library(library, stored(embedder, settings.cache_dir), settings.prototypes_dir)
    except EmbeddingError as exc:
        stderr.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return EXIT_FAILED
    if isinstance(embedder, OnnxEmbedder):
        print(embedder.file)  # plain: a build script may read the path
    else:
        stderr.print(f"the {settings.embedding_backend} backend exports nothing", soft_wrap=True)
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from scribe_service.app import create_app
    from scribe_service.logs import logging_config

    overrides = {"host": args.host, "port": args.port}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    if not is_loopback(settings.host) and settings.api_key is None:
        if not settings.allow_unauthenticated:
            console.print(
                f"[red]error:[/red] refusing to serve on {settings.host} without an API key: "
                "set SCRIBE_API_KEY (or SCRIBE_ALLOW_UNAUTHENTICATED=1 on a trusted network)"
            )
            return 2
        console.print(f"[yellow]warning:[/yellow] serving on {settings.host} with no API key")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=logging_config(settings.log_level, settings.log_format),
        access_log=False,  # AccessLogMiddleware writes the access line, with the request id
        # SIGTERM: stop accepting, let in-flight scoring finish, then exit.
        timeout_graceful_shutdown=settings.shutdown_grace,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scribe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service (settings: SCRIBE_* env)")
    serve.add_argument("--host", help="bind address (default SCRIBE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default SCRIBE_PORT or 8000)")
    serve.set_defaults(run=_serve)

    score = commands.add_parser(
        "score",
        help="score a JSONL file of requests or trajectories",
        epilog=f"exit status: {EXIT_OK} every trajectory ok; {EXIT_FAILED} some trajectory failed "
        f"or its request errored; {EXIT_PARTIAL} none failed but some are partial; "
        f"{EXIT_USAGE} unusable input. Responses are written to --out either way, and a "
        "summary line goes to stderr.",
    )
    score.add_argument("file", type=Path)
    score.add_argument("--out", type=Path, help="write one ScoreResponse per line here")
    score.add_argument("--limit", type=int, help="score only the first N records")
    score.add_argument("--url", help="a running service (default SCRIBE_URL; else in-process)")
    score.add_argument("--quiet", action="store_true", help="no per-step tables")
    score.set_defaults(run=lambda a: asyncio.run(_score_file(a)))

    route = commands.add_parser("route", help="segment and route a reasoning text, no judge")
    route.add_argument("text")
    route.add_argument("--prompt", help="the task the text answers")
    route.add_argument("--url", help="a running service (default SCRIBE_URL; else in-process)")
    route.set_defaults(run=lambda a: asyncio.run(_route_text(a)))

    embedder = commands.add_parser("embedder", help="the embedding model (SCRIBE_EMBEDDING_*)")
    embedder_commands = embedder.add_subparsers(dest="embedder_command", required=True)
    export = embedder_commands.add_parser(
        "export",
        help="export the configured onnx embedder and store the library's exemplar vectors "
        "ahead of time (images, init containers); prints the exported file",
    )
    export.set_defaults(run=_export_embedder)

    listing = commands.add_parser("prototypes", help="list the skill-prototype library")
    listing.set_defaults(run=_prototypes)
    add_eval_parser(commands)
    add_library_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except (ValidationError, ValueError, OSError, LibraryError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
