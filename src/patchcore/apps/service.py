"""HTTP inspection service: fitted models served by name over FastAPI, with the web page at `/`."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import re
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from patchcore import __version__
from patchcore.apps.live import ServedModel, ServiceMetrics, VersionWatcher, without_paths
from patchcore.apps.outputs import prediction_row
from patchcore.core.thresholds import validate_false_alarm_rate
from patchcore.errors import ImageLoadError, ImageTooLargeError, PatchCoreError
from patchcore.io.images import decode_image
from patchcore.io.visualize import legend_html, overlay_png, patch_pair_pngs, preview_png
from patchcore.methods import load_model

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_BODY_TIMEOUT = 30.0
# Larger images are refused from their header: a 100 KB PNG can hold 84 MP, 250 MB once decoded.
DEFAULT_MAX_MEGAPIXELS = 40.0
DEFAULT_RELOAD_INTERVAL = 2.0
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
API_KEY_HEADER = "x-api-key"


def parse_model_argument(argument: str) -> tuple[str, Path]:
    """'NAME=DIR' or 'DIR' (named after the folder) -> (name, directory), the name validated."""
    name, separator, directory = argument.partition("=")
    if not separator:
        name, directory = Path(argument).name, argument
    if not MODEL_NAME.match(name):
        raise ValueError(
            f"model name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return name, Path(directory)


def load_models(arguments: list[str], device: str | None = None, rates: Sequence[str] = (),
                runtime: str | None = None) -> dict[str, ServedModel]:
    """Load every model once, failing before the server starts if any is missing or broken; `rates`: false-alarm
    rates to decide at instead of the models' own, 'RATE' for every model or 'NAME=RATE'."""
    served: dict[str, ServedModel] = {}
    for argument in arguments:
        name, directory = parse_model_argument(argument)
        if name in served:
            raise ValueError(f"two models are named {name!r}: name them with NAME=DIR")
        served[name] = ServedModel(name, load_model(directory, device=device, runtime=runtime), directory=directory,
                                   device=device, runtime=runtime)
    if not served:
        raise ValueError("no model to serve")
    for name, rate in parse_rate_arguments(rates, list(served)).items():
        served[name].false_alarm_rate = rate
    return served


def parse_rate_arguments(arguments: Sequence[str], names: list[str]) -> dict[str, float]:
    """'RATE' (every model) or 'NAME=RATE' -> {name: rate}; a NAME=RATE wins over a RATE for all."""
    rates: dict[str, float] = {}
    for argument in sorted(arguments, key=lambda text: "=" in text):  # the ones for all first
        name, separator, text = argument.rpartition("=")
        if separator and name not in names:
            raise ValueError(f"--false-alarm-rate {argument}: no model is named {name!r} (served: {', '.join(names)})")
        try:
            rate = float(text)
            validate_false_alarm_rate(rate)
        except ValueError as error:
            raise ValueError(f"--false-alarm-rate {argument}: give RATE or NAME=RATE with 0 < RATE < 1 "
                             f"({error})") from None
        rates.update({name: rate} if separator else dict.fromkeys(names, rate))
    return rates


class BodySizeLimit:
    """ASGI middleware: reads the request body up to `limit` bytes and answers 413 beyond it, before any
    parser sees it (the body, at most `limit` bytes, is then replayed to the app); a client that
    stops sending for `timeout` seconds gets 408 instead of holding a worker."""

    def __init__(self, app, limit: int, timeout: float) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = {"error": f"upload larger than {self.limit} bytes"}
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_json(send, 413, too_large)
            return
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                await _send_json(send, 408, {"error": f"request body not received within {self.timeout:g} s"})
                return
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await _send_json(send, 413, too_large)
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the disconnect as usual
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _send_json(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def create_app(
    models: dict[str, ServedModel],
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    api_key: str | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    reload_interval: float = DEFAULT_RELOAD_INTERVAL,
) -> FastAPI:
    """The service for already loaded models; `api_key` (if given) is required on every route but `/`,
    `/health`, `/metrics` and the API docs, in the X-API-Key header. Images over `max_megapixels` get 413
    from their header. Every `reload_interval` seconds (0: never) the model directories are checked for
    new versions, loaded and swapped in between requests."""
    max_pixels = int(max_megapixels * 1e6)
    metrics = ServiceMetrics(models)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        watcher = VersionWatcher(models, reload_interval) if reload_interval > 0 else None
        if watcher is not None:
            watcher.start()
        try:
            yield
        finally:
            if watcher is not None:
                watcher.stop()

    app = FastAPI(title="PatchCore inspection service", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=lifespan,
                  description="Anomaly scores, good/defect decisions and heatmaps from PatchCore models.")
    _serve_docs_offline(app)
    app.add_middleware(BodySizeLimit, limit=max_upload_bytes, timeout=body_timeout)

    @app.middleware("http")
    async def count(request: Request, call_next):  # outermost: 413s from the body limit are counted too
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            metrics.observe_request(request.url.path, 500, time.perf_counter() - started)
            raise
        metrics.observe_request(request.url.path, response.status_code, time.perf_counter() - started)
        return response
    page = files("patchcore.apps").joinpath("web/index.html").read_text(encoding="utf-8")
    page = page.replace("__HEATMAP_LEGEND__", legend_html())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": error.detail}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=422)

    def authorise(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get(API_KEY_HEADER, "")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, f"missing or wrong API key (send it in the {API_KEY_HEADER} header)")

    def choose(name: str | None) -> ServedModel:
        if name is None:
            if len(models) == 1:
                return next(iter(models.values()))
            raise HTTPException(400, f"several models are served: name one with ?model= ({', '.join(models)})")
        if name not in models:
            raise HTTPException(404, f"no model named {name!r}; served: {', '.join(models)}")
        return models[name]

    def decoded(data: bytes, name: str, served: ServedModel):
        """The upload as an RGB image at the model's bit depth: 413 when over the pixel limit (from its
        header), 422 when it is no readable image."""
        try:
            return decode_image(data, name, served.model.bit_depth, max_pixels=max_pixels)
        except ImageTooLargeError as error:
            raise HTTPException(413, str(error)) from error
        except ImageLoadError as error:
            raise HTTPException(422, str(error)) from error

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict:
        drift = {name: served.drift() for name, served in models.items()}
        return {"status": "ok", "version": __version__, "models": sorted(models),
                "model_versions": {name: served.version for name, served in models.items()},
                "drift_warnings": {name: report.reason for name, report in drift.items() if report.warning}}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus_metrics() -> PlainTextResponse:
        """Prometheus text format: requests by route and status, latency, decisions, normalised scores and
        drift per model."""
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/feedback", responses={413: {"description": "Upload or image too large"}})
    def feedback(
        request: Request,
        image: UploadFile = File(..., description="An image an operator judged good (a false alarm)"),
        model: str | None = Query(None, description="Model name; optional when one model is served"),
    ) -> dict:
        """Keep a falsely flagged good image in the model's feedback folder; `patchcore update MODEL_DIR
        --from-feedback` adds such images to the model (the live model is never changed here)."""
        authorise(request)
        served = choose(model)
        name = image.filename or "upload"
        data = image.file.read()
        decoded(data, name, served)  # only readable images are kept
        try:
            stored, new = served.store_feedback(data, name)
        except PatchCoreError as error:
            raise HTTPException(409, str(error)) from error
        return {"model": served.name, "stored": stored, "already_waiting": not new, "pending": len(served.feedback())}

    @app.get("/feedback")
    def list_feedback(request: Request, model: str | None = Query(None, description="Model name")) -> dict:
        authorise(request)
        served = choose(model)
        return {"model": served.name, "images": served.feedback()}

    @app.get("/models")
    def list_models(request: Request) -> list[dict]:
        authorise(request)
        return [summary(served) for served in models.values()]

    @app.get("/model")
    def model_manifest(request: Request, model: str | None = Query(None, description="Model name")) -> dict:
        authorise(request)
        return choose(model).manifest

    @app.post("/predict", responses={413: {"description": "Upload or image too large"}})
    def predict(
        request: Request,
        image: UploadFile = File(..., description="An image file (PNG, JPEG, BMP, TIFF, WebP)"),
        model: str | None = Query(None, description="Model name; optional when one model is served"),
        overlay: bool = Query(True, description="Include the heatmap overlay as a base64 PNG"),
        original: bool = Query(False, description="Include the image as the model saw it, as a base64 PNG"),
        good_patches: bool = Query(True, description="Include, for the largest regions, their worst patch and the "
                                                     "nearest good training patch as base64 PNGs"),
        false_alarm_rate: float | None = Query(None, gt=0, lt=1, description="Decide at this false-alarm rate "
                                               "instead of the served one"),
    ) -> dict:
        authorise(request)
        served = choose(model)
        name = image.filename or "upload"
        picture = decoded(image.file.read(), name, served)
        started = time.perf_counter()
        try:
            with served.lock:
                live = served.model  # a reload swaps models only between requests
                rate = served.rate if false_alarm_rate is None else false_alarm_rate
                prediction = live.predict([picture], false_alarm_rate=rate)[0]
                served.recent.append(prediction.score)
        except PatchCoreError as error:
            raise HTTPException(422, f"{name}: {error}") from error
        metrics.observe_prediction(served.name, prediction.decision, prediction.normalised_score)
        row = prediction_row(prediction)
        del row["image"]  # the upload is named by `filename`
        row["regions"] = without_paths(row["regions"])  # a nearest good patch's training file, by name
        body = {
            "model": served.name,
            "model_version": int(live.manifest_.get("version", 1)),
            "filename": name,
            "width": picture.width,
            "height": picture.height,
            **row,
            "false_alarm_rate": rate,
            "is_anomalous": prediction.is_anomalous,
            "seconds": time.perf_counter() - started,
        }
        if overlay:
            png = overlay_png(picture, prediction.anomaly_map, live.nominal_map_range_, regions=prediction.regions)
            body["overlay_png_base64"] = base64.b64encode(png).decode("ascii")
        if good_patches and prediction.regions:
            _add_good_patch_pictures(body["regions"], prediction.regions, picture)
        if original:
            body["original_png_base64"] = base64.b64encode(preview_png(picture)).decode("ascii")
        return body

    return app


# Regions, largest first, whose worst patch and nearest good patch are sent as pictures.
GOOD_PATCH_PICTURES = 3


def _add_good_patch_pictures(rows: list[dict], regions: list, picture) -> None:
    """`patch_png_base64` and `good_patch_png_base64` (None when the training image is not readable by the
    service) on the rows of the GOOD_PATCH_PICTURES largest regions that name a good patch."""
    largest = sorted(range(len(regions)), key=lambda i: -regions[i].area)[:GOOD_PATCH_PICTURES]
    for i in largest:
        if regions[i].nearest_good is None:
            continue
        patch, good = patch_pair_pngs(picture, regions[i].nearest_good)
        rows[i]["patch_png_base64"] = base64.b64encode(patch).decode("ascii")
        rows[i]["good_patch_png_base64"] = None if good is None else base64.b64encode(good).decode("ascii")


def _serve_docs_offline(app: FastAPI) -> None:
    """Swagger UI at /docs from the files the fastapi-offline package installs (Swagger UI 5, which reads the
    OpenAPI 3.1 schema FastAPI writes): FastAPI's default page loads them from a CDN and stays blank without
    internet. /openapi.json is the schema either way."""
    try:
        import fastapi_offline
    except ImportError:
        @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
        def docs_missing() -> str:
            return ("<p>The API schema is at <a href='openapi.json'>/openapi.json</a>; install fastapi-offline "
                    "for the interactive page here.</p>")
        return
    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs-assets", StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="openapi.json", title=f"{app.title} - API",
                                   swagger_js_url="docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="docs-assets/swagger-ui.css",
                                   swagger_favicon_url="docs-assets/favicon.png")


def summary(served: ServedModel) -> dict:
    threshold = served.model.decision_threshold(served.rate)
    return {
        "name": served.name,
        "version": served.version,
        "method": served.model.method,
        "backbone": served.model.backbone,
        "n_train_images": served.model.n_train_images_,
        "threshold": None if threshold is None else threshold.value,
        "false_alarm_rate": served.rate,
    }
