"""The browser-facing endpoints, served as plain HTTP (Envoy routes them here):

- ``GET /v1/callback``: the provider's redirect; 302 to the app's return URL.
- ``GET/POST /v1/capture/{state}``: the hosted page where a user enters
  static credentials (API keys, username and password).

Pages are self-contained HTML with a strict Content-Security-Policy; every
value shown is escaped, and submitted values are never echoed back.
"""

from __future__ import annotations

import contextlib
import html
import socket
from collections.abc import Generator
from urllib.parse import parse_qsl

import grpc
import uvicorn
from nexus.broker.v1 import connections_pb2, connections_pb2_grpc
from nexus_common import Caller, InternalClient, NexusError, current_caller
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

__all__ = ["BrowserServer", "create_browser_app"]

_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "NOT_FOUND": 404,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "UNAVAILABLE": 503,
}
_MAX_FORM_BYTES = 64 * 1024
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}"
    "label{display:block;margin-top:1rem}input{width:100%;padding:.5rem;box-sizing:border-box}"
    "button{margin-top:1.5rem;padding:.6rem 1.2rem}.error{color:#a00}"
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=_HEADERS)


def _error_page(error: NexusError) -> HTMLResponse:
    status = _HTTP_STATUS.get(error.grpc_status, 500)
    title = "This link cannot be used" if status < 500 else "Please try again shortly"
    return _page(title, f'<p class="error">{html.escape(error.message)}</p>', status)


def _form(state: str, form: connections_pb2.CaptureForm, problem: str = "") -> str:
    fields = "".join(
        f'<label for="{html.escape(f.name)}">{html.escape(f.label)}</label>'
        f'<input id="{html.escape(f.name)}" name="{html.escape(f.name)}" '
        f'type="{"password" if f.secret else "text"}" autocomplete="off"'
        f"{' required' if f.required else ''}>"
        for f in form.fields
    )
    note = f'<p class="error" role="alert">{html.escape(problem)}</p>' if problem else ""
    about = f"<p>{html.escape(form.provider_description)}</p>" if form.provider_description else ""
    return (
        f'{about}{note}<form method="post" action="/v1/capture/{html.escape(state)}">'
        f'{fields}<button type="submit">Connect</button></form>'
    )


def create_browser_app(broker: InternalClient) -> Starlette:
    stub = connections_pb2_grpc.ConnectionServiceStub(broker.channel)

    async def callback(request: Request) -> Response:
        current_caller.set(Caller("browser", "callback"))
        query = request.query_params
        try:
            reply = await broker.call(
                stub.CompleteAuthorization,
                connections_pb2.CompleteAuthorizationRequest(
                    state=query.get("state", ""),
                    code=query.get("code", ""),
                    error=query.get("error", ""),
                ),
            )
        except NexusError as error:
            return _error_page(error)
        return RedirectResponse(reply.redirect_url, status_code=302, headers=_HEADERS)

    async def capture(request: Request) -> Response:
        current_caller.set(Caller("browser", "capture"))
        state = request.path_params["state"]
        try:
            form = await broker.call(
                stub.GetCaptureForm, connections_pb2.GetCaptureFormRequest(state=state)
            )
        except NexusError as error:
            return _error_page(error)
        title = f"Connect {form.provider_name}"
        if request.method == "GET":
            return _page(title, _form(state, form))
        body = await request.body()
        if len(body) > _MAX_FORM_BYTES:
            return _page(title, _form(state, form, "The form is too large."), 413)
        values = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        try:
            reply = await broker.call(
                stub.CaptureCredentials,
                connections_pb2.CaptureCredentialsRequest(state=state, credentials=values),
            )
        except NexusError as error:
            if error.grpc_status == grpc.StatusCode.INVALID_ARGUMENT.name:
                return _page(title, _form(state, form, error.message), 400)
            return _error_page(error)
        return RedirectResponse(reply.redirect_url, status_code=302, headers=_HEADERS)

    return Starlette(
        routes=[
            Route("/v1/callback", callback, methods=["GET"]),
            Route("/v1/capture/{state}", capture, methods=["GET", "POST"]),
        ]
    )


class _EmbeddedUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The gateway's own SIGTERM handling stops this server.
        yield


class BrowserServer:
    """Serves the browser app on a socket bound now, so port 0 works in tests."""

    def __init__(self, app: Starlette, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.socket = socket.create_server((host, int(port)), reuse_port=False)
        self.port: int = self.socket.getsockname()[1]
        self._server = _EmbeddedUvicorn(
            uvicorn.Config(
                app,
                log_level="warning",
                lifespan="off",
                access_log=False,
                timeout_graceful_shutdown=5,
            )
        )

    async def serve(self) -> None:
        try:
            await self._server.serve(sockets=[self.socket])
        finally:
            self.socket.close()

    def stop(self) -> None:
        self._server.should_exit = True
        if not self._server.started:
            self.socket.close()
