"""The routes of the page (`build_app(config)`): Starlette, Jinja2 templates and a little plain
JavaScript shipped in this package; nothing is loaded from the internet.

    GET  /                         status, the latest results and failures (live)
    GET  /results?folder=&q=&page= the results gallery (inbox folders shown as folders)
    GET  /results/<path>           one result: overlay / colour map / input, segments, files
    GET  /failures                 failed inputs with their reasons, each with a Retry button
    GET  /models                   model versions, current one, validation curves
    GET  /files/<path>             a file of the outbox (and nothing else)
    GET  /thumbs/<path>            a result's cached thumbnail;  /inputs/<path>: its input image
    GET  /api/status               the status as JSON;  /fragments/<part>: live parts of pages
    POST /failures/<name>/retry, /models/<version>/promote, /models/rollback, /upload
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from common import registry, state
from common.config import Config
from common.errors import ModelError
from segd import retry as retrying
from segd.web import curves, data, security, thumbnails, uploads
from segd.web.middleware import Guard

HERE = Path(__file__).resolve().parent
PER_PAGE = 24
HOME_RESULTS, HOME_FAILURES = 12, 5
MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".json": "application/json",
    ".mp4": "video/mp4",
}


def build_app(config: Config) -> Starlette:
    """The web app for `config` (its folders, Redis, models); one CSRF token per app."""
    csrf = security.new_csrf_token()
    outbox, state_dir = Path(config.paths.outbox), Path(config.paths.state)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["bytes"] = data.human_bytes
    env.filters["urlquote"] = lambda s: _quote(str(s))
    env.filters["when"] = _when
    env.filters["plural"] = lambda n, word: f"{n} {word}" + ("" if n == 1 else "s")
    templates = Jinja2Templates(env=env)

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        context.update(
            csrf=csrf, refresh_ms=int(config.web.refresh_s * 1000), path=request.url.path
        )
        context.setdefault("notice", request.query_params.get("notice"))
        context.setdefault("notice_ok", request.query_params.get("ok") == "1")
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    async def check_csrf(request: Request) -> None:
        given = request.headers.get(security.CSRF_HEADER)
        if given is None and request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            given = (await request.form()).get(security.CSRF_FIELD)  # type: ignore[assignment]
        problem = security.csrf_problem(request.method, dict(request.headers), given, csrf)
        if problem:
            raise HTTPException(403, problem)

    def result_folder(relative: str) -> Path:
        folder = security.outbox_folder(outbox, relative)
        if folder is None or not (folder / data.MANIFEST).is_file():
            raise HTTPException(404, f"no result {relative!r} in the outbox")
        return folder

    # --- pages --------------------------------------------------------------------------------
    async def home(request: Request) -> Response:
        return page(request, "index.html", **_home_parts(config))

    async def results(request: Request) -> Response:
        relative = request.query_params.get("folder", "").strip("/")
        folder = security.outbox_folder(outbox, relative) if relative else outbox
        if folder is None:
            raise HTTPException(404, f"no folder {relative!r} in the outbox")
        query = request.query_params.get("q", "")
        number = _page_number(request)
        items, total = data.entries(outbox, folder, query, number, PER_PAGE)
        pages = max(1, math.ceil(total / PER_PAGE))
        crumbs = []
        for i, part in enumerate(relative.split("/") if relative else []):
            crumbs.append((part, "/".join(relative.split("/")[: i + 1])))
        return page(
            request,
            "results.html",
            entries=items,
            total=total,
            folder=relative,
            crumbs=crumbs,
            q=query,
            page_number=number,
            pages=pages,
            link=lambda n: "/results?" + urlencode({"folder": relative, "q": query, "page": n}),
        )

    async def result(request: Request) -> Response:
        relative = request.path_params["path"]
        folder = security.outbox_folder(outbox, relative)
        if folder is not None and not (folder / data.MANIFEST).is_file():
            return RedirectResponse("/results?" + urlencode({"folder": relative}), 303)
        info = data.result(outbox, result_folder(relative))
        has_input = data.input_of(state_dir, info["manifest"].get("job_id")) is not None
        colors = _segment_colors([s["id"] for s in info["segments"]])
        return page(request, "result.html", result=info, has_input=has_input, colors=colors)

    async def failures(request: Request) -> Response:
        return page(request, "failures.html", failures=data.failures(state_dir))

    async def models(request: Request) -> Response:
        info = data.models(config)
        svgs = {v["version"]: curves.validation_svg(v["history"]) for v in info["versions"]}
        return page(request, "models.html", models=info, svgs=svgs)

    async def fragment(request: Request) -> Response:
        part = request.path_params["part"]
        if part not in ("status", "latest", "failures"):
            raise HTTPException(404, f"no fragment {part!r}")
        return page(request, f"_{part}.html", **_home_parts(config))

    async def api_status(request: Request) -> Response:
        return JSONResponse(data.status(config))

    # --- files --------------------------------------------------------------------------------
    async def files(request: Request) -> Response:
        relative = request.path_params["path"]
        path = security.outbox_file(outbox, relative)
        if path is None:
            raise HTTPException(404, "not a file of the outbox")
        media = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})

    async def thumb(request: Request) -> Response:
        folder = result_folder(request.path_params["path"])
        made = thumbnails.result_thumbnail(state_dir, folder, config.web.thumbnail_px)
        if made is None:
            raise HTTPException(404, "this result has no picture")
        return FileResponse(
            made, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"}
        )

    async def input_image(request: Request) -> Response:
        folder = result_folder(request.path_params["path"])
        job_id = data.read_json(folder / data.MANIFEST).get("job_id")
        source = data.input_of(state_dir, job_id)
        made = thumbnails.input_preview(state_dir, source, str(job_id)) if source else None
        if made is None:
            raise HTTPException(404, "the input of this result is not kept in state/done/")
        return FileResponse(
            made, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"}
        )

    async def curve(request: Request) -> Response:
        version = request.path_params["version"]
        found = next((v for v in data.models(config)["versions"] if v["version"] == version), None)
        if found is None:
            raise HTTPException(404, f"no model version {version!r}")
        return Response(curves.validation_svg(found["history"]), media_type="image/svg+xml")

    # --- actions ------------------------------------------------------------------------------
    async def retry(request: Request) -> Response:
        await check_csrf(request)
        name = request.path_params["name"]
        if not security.plain_name(name) or not (state_dir / state.FAILED / name).is_dir():
            raise HTTPException(404, f"no failed input {name!r} in state/failed/")
        outcomes = retrying.retry(config, [name])  # the same action as `segd retry NAME`
        lines, ok = [], True
        for outcome in outcomes:
            if outcome.refused:
                ok = False
                lines.append(f"{outcome.target}: not retried: {outcome.refused}")
            else:
                lines.append(f"{outcome.target}: queued again as job {outcome.job_id}")
        return _back(
            "/failures", "; ".join(lines) or f"{name}: nothing to retry", ok and bool(lines)
        )

    async def promote(request: Request) -> Response:
        await check_csrf(request)
        version = request.path_params["version"]
        try:
            previous = registry.promote(config.paths.models, version, reason="promote (web)")
        except ModelError as exc:
            return _back("/models", str(exc), False)
        return _back("/models", f"{version} is current now (was {previous})", True)

    async def rollback(request: Request) -> Response:
        await check_csrf(request)
        try:
            before, after = registry.rollback(config.paths.models)
        except ModelError as exc:
            return _back("/models", str(exc), False)
        return _back("/models", f"rolled back from {before} to {after}", True)

    async def upload(request: Request) -> Response:
        await check_csrf(request)
        try:
            name = uploads.file_name(request.headers.get("x-file-name"))
            length = request.headers.get("content-length")
            target = await uploads.receive(
                Path(config.paths.inbox),
                name,
                request.stream(),
                config.web.max_upload_bytes,
                int(length) if length and length.isdigit() else None,
            )
        except uploads.UploadRefused as exc:
            return JSONResponse({"ok": False, "error": exc.reason}, status_code=exc.status)
        return JSONResponse({"ok": True, "name": target.name}, status_code=201)

    async def error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith(("/api/", "/upload")):
            return JSONResponse({"ok": False, "error": exc.detail}, status_code=exc.status_code)
        return page(
            request, "error.html", exc.status_code, status=exc.status_code, detail=exc.detail
        )

    routes = [
        Route("/", home),
        Route("/results", results),
        Route("/results/{path:path}", result),
        Route("/failures", failures),
        Route("/failures/{name}/retry", retry, methods=["POST"]),
        Route("/models", models),
        Route("/models/rollback", rollback, methods=["POST"]),
        Route("/models/{version}/promote", promote, methods=["POST"]),
        Route("/models/{version}/curve.svg", curve),
        Route("/files/{path:path}", files),
        Route("/thumbs/{path:path}", thumb),
        Route("/inputs/{path:path}", input_image),
        Route("/upload", upload, methods=["POST"]),
        Route("/api/status", api_status),
        Route("/fragments/{part}", fragment),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: error})
    app.add_middleware(Guard, token=config.web.token)
    app.state.csrf = csrf
    return app


def _home_parts(config: Config) -> dict:
    outbox = Path(config.paths.outbox)
    latest, total = data.entries(outbox, outbox, per_page=HOME_RESULTS)
    found = data.failures(Path(config.paths.state))
    return {
        "status": data.status(config),
        "entries": latest,
        "total": total,
        "failures": found[:HOME_FAILURES],
        "failures_total": len(found),
    }


def _when(stamp: object) -> str:
    """'2026-12-02T08:19:25.992+00:00' → '2026-12-02 08:19:25 UTC' (other text unchanged)."""
    import datetime as dt

    try:
        moment = dt.datetime.fromisoformat(str(stamp))
    except ValueError:
        return str(stamp or "")
    if moment.tzinfo is not None:
        return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    return max(1, int(raw)) if raw.isdigit() else 1


def _back(where: str, notice: str, ok: bool) -> Response:
    """Post/redirect/get: back to `where`, showing `notice`."""
    return RedirectResponse(f"{where}?" + urlencode({"notice": notice, "ok": int(ok)}), 303)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="/")


def _segment_colors(ids: list[int]) -> dict[int, str]:
    """The fixed palette colour of each segment id (as in color.png), '#rrggbb'."""
    if not ids:
        return {}
    from worker.image.outputs import palette

    lut = palette()
    return {
        i: "#{:02x}{:02x}{:02x}".format(*(int(c) for c in lut[i])) for i in ids if 0 < i < 65536
    }
