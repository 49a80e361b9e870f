"""The monitor's Starlette app: monitor.html and its assets, JSON under /api/, live
updates as Server-Sent Events, /healthz and Prometheus /metrics.

Read-only by construction: every route is GET (HEAD), nothing here holds a handle
that could change the node - only the ``NodeView``. Every asset ships in the package
(``static/``): the page works offline, no CDN. Only requests naming an allowed host
are answered (DNS rebinding: a web page whose name is re-pointed at 127.0.0.1 would
otherwise read task logs through the visitor's browser), and live event streams
are capped (each one polls the view every push interval).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from hivemind_worker.monitor.view import NodeView, tasks_by_state

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
MAX_LOG_LINES = 1000
MAX_EVENT_SUBSCRIBERS = 16  # open monitor tabs; each costs a view poll per push interval
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'",
}


def status_summary(view: NodeView) -> dict[str, Any]:
    """/api/status: the node's status plus the headline figures the CLI prints."""
    status = dict(view.status())
    tasks = view.tasks()
    by_state = tasks_by_state(tasks)
    sample = view.latest_sample()
    gpus = (sample or {}).get("gpus") or []
    utils = [g["utilization_percent"] for g in gpus if g.get("utilization_percent") is not None]
    earnings = view.earnings()
    status["tasks_by_state"] = by_state
    status["usage"] = {
        "time_ms": (sample or {}).get("time_ms"),
        "cpu_percent": (sample or {}).get("host", {}).get("cpu_percent"),
        "memory_percent": (sample or {}).get("host", {}).get("memory_percent"),
        "gpu_percent": round(sum(utils) / len(utils), 2) if utils else None,
    }
    status["earnings"] = {k: earnings.get(k) for k in ("today", "total", "last_reward")}
    status["counters"] = view.agent_counters()
    status["server_time_ms"] = int(time.time() * 1000)
    return status


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True, default=str)


class _Events:
    """One SSE subscriber: sends each kind of data when it changed since its last push."""

    def __init__(self, view: NodeView, stop: asyncio.Event, interval_s: float) -> None:
        self.view, self.stop, self.interval_s = view, stop, interval_s
        self.sent: dict[str, str] = {}
        self.last_point_ms = 0
        self.log_seq: dict[str, int] = {}

    def _changed(self, name: str, data: Any) -> str | None:
        text = _json(data)
        if self.sent.get(name) == text:
            return None
        self.sent[name] = text
        return f"event: {name}\ndata: {text}\n\n"

    def _tick(self) -> list[str]:
        v = self.view
        out = [self._changed("status", status_summary(v))]
        tasks = v.tasks()
        out.append(self._changed("tasks", tasks))
        out.append(self._changed("history", v.history()))
        out.append(self._changed("earnings", v.earnings()))
        points = [p for p in v.telemetry_series() if p["time_ms"] > self.last_point_ms]
        if points:
            self.last_point_ms = points[-1]["time_ms"]
            out.append(f"event: telemetry\ndata: {_json(points)}\n\n")
        live = {t["task_id"] for t in tasks}
        for task_id in live:
            lines = [ln for ln in v.task_logs(task_id, 200) if ln["seq"] > self.log_seq.get(task_id, 0)]
            if lines:
                self.log_seq[task_id] = lines[-1]["seq"]
                out.append(f"event: logs\ndata: {_json({'task_id': task_id, 'lines': lines})}\n\n")
        for gone in set(self.log_seq) - live:
            del self.log_seq[gone]
        return [m for m in out if m]

    async def stream(self) -> AsyncIterator[str]:
        yield "retry: 3000\n\n"
        idle = 0.0
        while not self.stop.is_set():
            try:
                messages = self._tick()
            except Exception:
                logger.warning("monitor: event update failed", exc_info=True)
                messages = []
            for message in messages:
                yield message
            idle = 0.0 if messages else idle + self.interval_s
            if idle >= 15:  # a comment keeps proxies and the browser from timing out
                idle = 0.0
                yield ": ping\n\n"
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=self.interval_s)
            except asyncio.TimeoutError:
                pass


class _CountedStream(StreamingResponse):
    """An event stream that gives its subscriber slot back however it ends (client
    gone, server stopping): the slot is taken by the handler, returned here."""

    def __init__(self, counter: list[int], content: AsyncIterator[str]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.counter = counter

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.counter[0] -= 1


class _ReadOnlyHeaders:
    """Refuses anything but GET/HEAD and adds security headers (pure ASGI, so the
    event stream is not buffered as BaseHTTPMiddleware would)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] not in ("GET", "HEAD"):
            response = JSONResponse({"error": "the monitor is read-only"}, status_code=405,
                                    headers={"allow": "GET, HEAD"})
            return await response(scope, receive, send)

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in _SECURITY_HEADERS.items() if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(view: NodeView, push_interval_s: float = 2.0, allowed_hosts: Sequence[str] = (),
               max_subscribers: int = MAX_EVENT_SUBSCRIBERS) -> Starlette:
    """``allowed_hosts``: names the Host header may carry besides loopback (the
    configured monitor_host, the node's own names and addresses)."""
    registry: list[Any] = []  # built at the first scrape (see metrics())
    stop = asyncio.Event()
    subscribers = [0]  # open event streams, counted by the streams themselves

    async def page(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "monitor.html", media_type="text/html")

    async def root(request: Request) -> Response:
        return RedirectResponse("/monitor.html", status_code=307)

    async def api_status(request: Request) -> Response:
        return JSONResponse(status_summary(view))

    async def api_tasks(request: Request) -> Response:
        return JSONResponse(view.tasks())

    async def api_task_logs(request: Request) -> Response:
        try:
            n = max(1, min(int(request.query_params.get("n", "100")), MAX_LOG_LINES))
        except ValueError:
            return JSONResponse({"error": "n must be a whole number"}, status_code=400)
        return JSONResponse(view.task_logs(request.path_params["task_id"], n))

    async def api_history(request: Request) -> Response:
        return JSONResponse(view.history())

    async def api_telemetry(request: Request) -> Response:
        try:
            since = int(request.query_params.get("since_ms", "0"))
        except ValueError:
            return JSONResponse({"error": "since_ms must be a whole number"}, status_code=400)
        return JSONResponse([p for p in view.telemetry_series() if p["time_ms"] > since])

    async def api_sample(request: Request) -> Response:
        return JSONResponse(view.latest_sample())

    async def api_earnings(request: Request) -> Response:
        return JSONResponse(view.earnings())

    async def api_events(request: Request) -> Response:
        if subscribers[0] >= max_subscribers:
            return JSONResponse(
                {"error": f"{max_subscribers} live views are open already, the most this node serves; "
                          "close a monitor tab, or poll /api/status instead"},
                status_code=503, headers={"retry-after": "10"},
            )
        subscribers[0] += 1  # taken before any await, so no two requests race past the cap
        return _CountedStream(subscribers, _Events(view, stop, push_interval_s).stream())

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def metrics(request: Request) -> Response:
        # prometheus_client (~1 MB resident) loads at the first scrape: most nodes are
        # never scraped, and the idle daemon's footprint is a goal (issue 13).
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from hivemind_worker.monitor.metrics import build_registry

        if not registry:
            registry.append(build_registry(view))
        return Response(generate_latest(registry[0]), media_type=CONTENT_TYPE_LATEST)

    get = ["GET"]
    routes = [
        Route("/", root, methods=get),
        Route("/monitor.html", page, methods=get),
        Route("/api/status", api_status, methods=get),
        Route("/api/tasks", api_tasks, methods=get),
        Route("/api/tasks/{task_id}/logs", api_task_logs, methods=get),
        Route("/api/history", api_history, methods=get),
        Route("/api/telemetry", api_telemetry, methods=get),
        Route("/api/telemetry/latest", api_sample, methods=get),
        Route("/api/earnings", api_earnings, methods=get),
        Route("/api/events", api_events, methods=get),
        Route("/healthz", healthz, methods=get),
        Route("/metrics", metrics, methods=get),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]

    async def on_error(request: Request, exc: Exception) -> Response:
        logger.warning("monitor: %s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "the node could not answer this request; see the agent's log"}, status_code=500)

    hosts = sorted({*LOOPBACK_HOSTS, *(h.lower() for h in allowed_hosts if h)})
    app = Starlette(routes=routes, exception_handlers={Exception: on_error},
                    middleware=[Middleware(_ReadOnlyHeaders),
                                Middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)])
    app.state.stop = stop
    app.state.subscribers = subscribers
    return app
