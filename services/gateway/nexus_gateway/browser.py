"""The browser-facing endpoints, served as plain HTTP (Envoy routes them here):

- ``GET /v1/connect/{state}``: ``auth_url``. Binds the state to this browser
  with a cookie, then sends it to the provider or to the capture page.
- ``GET /v1/callback/{provider}``: the provider's redirect; 302 to the app's
  return URL. Only the browser holding the state's cookie may complete it.
- ``GET/POST /v1/capture/{state}``: the hosted page where a user enters
  static credentials (API keys, username and password).

Pages are self-contained HTML with a strict Content-Security-Policy; every
value shown is escaped, and submitted values are never echoed back. Errors
name their ErrorInfo reason (``data-reason``), or answer JSON when the client
asks for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import secrets
import socket
import time
from collections.abc import Generator
from urllib.parse import parse_qsl

import grpc
import uvicorn
from nexus.broker.v1 import connections_pb2, connections_pb2_grpc
from nexus_common import (
    ERROR_DOMAIN,
    Caller,
    InternalClient,
    NexusError,
    RequestTooLarge,
    ServerTls,
    ValidationFailed,
    current_caller,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

__all__ = ["BrowserServer", "create_browser_app"]

_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
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
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
}
_MAX_FORM_BYTES = 64 * 1024
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}"
    "label{display:block;margin-top:1rem}input{width:100%;padding:.5rem;box-sizing:border-box}"
    "button{margin-top:1.5rem;padding:.6rem 1.2rem}.error{color:#a00}"
)
_BINDING_COOKIE = "nexus-binding-"


def _headers(form_action: str = "") -> dict[str, str]:
    """Security headers; a page whose form leads back to the app admits exactly
    that origin in form-action, since Chromium applies it to the redirect after
    the submit too."""
    sources = "'self'" + (f" {form_action}" if form_action else "")
    return {**_HEADERS, "Content-Security-Policy": _CSP.format(form_action=sources)}


def _page(title: str, body: str, status: int = 200, form_action: str = "") -> HTMLResponse:
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=_headers(form_action))


def _problem(error: NexusError) -> str:
    """The error for a person, and its reason for a program."""
    return (
        f'<p class="error" id="error" role="alert" data-reason="{html.escape(error.reason)}">'
        f"{html.escape(error.message)}</p>"
    )


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _error_reply(request: Request, error: NexusError) -> Response:
    status = (
        413 if error.reason == "REQUEST_TOO_LARGE" else _HTTP_STATUS.get(error.grpc_status, 500)
    )
    if _wants_json(request):
        # The shape Envoy gives REST errors (google.rpc.Status as JSON).
        code = grpc.StatusCode.__members__.get(error.grpc_status, grpc.StatusCode.UNKNOWN).value[0]
        info = {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": error.reason,
            "domain": ERROR_DOMAIN,
            "metadata": dict(error.metadata),
        }
        body = {"code": code, "message": error.message, "details": [info]}
        return JSONResponse(body, status_code=status, headers=_headers())
    title = "This link cannot be used" if status < 500 else "Please try again shortly"
    return _page(title, _problem(error), status)


def _form(state: str, form: connections_pb2.CaptureForm, problem: NexusError | None) -> str:
    fields = "".join(
        f'<label for="{html.escape(f.name)}">{html.escape(f.label)}</label>'
        f'<input id="{html.escape(f.name)}" name="{html.escape(f.name)}" '
        f'type="{"password" if f.secret else "text"}" autocomplete="off"'
        f"{' required' if f.required else ''}>"
        for f in form.fields
    )
    note = _problem(problem) if problem else ""
    about = f"<p>{html.escape(form.provider_description)}</p>" if form.provider_description else ""
    return (
        f'{about}{note}<form method="post" action="/v1/capture/{html.escape(state)}" '
        f'accept-charset="utf-8">{fields}<button type="submit">Connect</button></form>'
    )


def _form_values(body: bytes) -> dict[str, str]:
    """The submitted fields; bytes that are not UTF-8 are refused, never guessed."""
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict"
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationFailed("the form was not sent as UTF-8", field="form") from exc
    return dict(pairs)


class _Binding:
    """The cookie tying a state to the browser that opened auth_url. Its name
    comes from the state, so several connections can be under way at once.
    Over https it is a __Host- cookie: Secure, host-only, path /, so a sibling
    domain cannot plant one (RFC 6265bis §4.1.3.2)."""

    def __init__(self, secure: bool) -> None:
        self._secure = secure
        self._prefix = ("__Host-" if secure else "") + _BINDING_COOKIE

    def name(self, state: str) -> str:
        return self._prefix + hashlib.sha256(state.encode()).hexdigest()[:24]

    def read(self, request: Request, state: str) -> str:
        return request.cookies.get(self.name(state), "")

    def set(self, response: Response, state: str, value: str, expires_at: int) -> None:
        response.set_cookie(
            self.name(state),
            value,
            max_age=max(1, int(expires_at - time.time())),
            path="/",
            secure=self._secure,
            httponly=True,
            samesite="lax",
        )

    def clear(self, response: Response, state: str) -> None:
        response.delete_cookie(
            self.name(state), path="/", secure=self._secure, httponly=True, samesite="lax"
        )


def create_browser_app(broker: InternalClient, *, secure_cookies: bool) -> Starlette:
    stub = connections_pb2_grpc.ConnectionServiceStub(broker.channel)
    binding = _Binding(secure_cookies)

    async def connect(request: Request) -> Response:
        current_caller.set(Caller("browser", "connect"))
        state = request.path_params["state"]
        value = binding.read(request, state) or secrets.token_urlsafe(32)
        try:
            reply = await broker.call(
                stub.BeginAuthorization,
                connections_pb2.BeginAuthorizationRequest(state=state, binding=value),
            )
        except NexusError as error:
            return _error_reply(request, error)
        response = RedirectResponse(reply.redirect_url, status_code=302, headers=_headers())
        binding.set(response, state, value, reply.expire_time.seconds)
        return response

    async def callback(request: Request) -> Response:
        current_caller.set(Caller("browser", "callback"))
        query = request.query_params
        state = query.get("state", "")
        completion = connections_pb2.CompleteAuthorizationRequest(
            state=state,
            code=query.get("code", ""),
            error=query.get("error", ""),
            provider=request.path_params["provider"],
            binding=binding.read(request, state),
        )
        if "iss" in query:
            completion.iss = query["iss"]
        try:
            reply = await broker.call(stub.CompleteAuthorization, completion)
        except NexusError as error:
            return _error_reply(request, error)
        response = RedirectResponse(reply.redirect_url, status_code=302, headers=_headers())
        binding.clear(response, state)
        return response

    async def capture(request: Request) -> Response:
        current_caller.set(Caller("browser", "capture"))
        state = request.path_params["state"]
        bound = binding.read(request, state)
        try:
            form = await broker.call(
                stub.GetCaptureForm,
                connections_pb2.GetCaptureFormRequest(state=state, binding=bound),
            )
        except NexusError as error:
            return _error_reply(request, error)
        title = f"Connect {form.provider_name}"
        if request.method == "GET":
            return _page(title, _form(state, form, None), form_action=form.return_origin)
        try:
            body = await request.body()
            if len(body) > _MAX_FORM_BYTES:
                raise RequestTooLarge(f"the form is larger than {_MAX_FORM_BYTES} bytes")
            reply = await broker.call(
                stub.SubmitCaptureForm,
                connections_pb2.SubmitCaptureFormRequest(
                    state=state, credentials=_form_values(body), binding=bound
                ),
            )
        except NexusError as error:
            if error.grpc_status != grpc.StatusCode.INVALID_ARGUMENT.name:
                return _error_reply(request, error)
            if _wants_json(request):
                return _error_reply(request, error)
            page = _form(state, form, error)
            return _page(title, page, 400, form_action=form.return_origin)
        # 303: the browser follows with a GET, to a page the form-action above admits.
        response = RedirectResponse(reply.redirect_url, status_code=303, headers=_headers())
        binding.clear(response, state)
        return response

    return Starlette(
        routes=[
            Route("/v1/connect/{state}", connect, methods=["GET"]),
            Route("/v1/callback/{provider}", callback, methods=["GET"]),
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

    def __init__(self, app: Starlette, address: str, tls: ServerTls | None = None) -> None:
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
                # With the gateway's certificate, the browser pages (authorization
                # codes, captured API keys) do not cross the pod network in clear.
                ssl_certfile=tls.cert_file if tls else None,
                ssl_keyfile=tls.key_file if tls else None,
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
