"""What only servers need: the server factory, the one error translator, the one auth interceptor, the metrics and
tracing interceptors, TLS, health, reflection and signals.

`import shoal` never loads this module (a test checks it): clients need none of it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_status import rpc_status

from shoal import _tracing
from shoal._access import Guard, Verdict, collection_of
from shoal._config import KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS, MAX_MESSAGE_BYTES, RETRY_INITIAL_BACKOFF_S
from shoal._errors import Internal, InvalidArgument, PermissionDenied, ShoalError, error_for_code, to_status
from shoal._metrics import RPC_DURATION, RPC_REQUESTS
from shoal._ports import port_problem

log = logging.getLogger("shoal.server")

SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Accept the clients' keepalive pings instead of closing with "too many pings": a coordinator pings
    # its shards every 2 s (coordinator/shards.py), more often than gRPC's default policy allows.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.max_ping_strikes", 0),
    # Ping idle clients too, so the streams of a peer that vanished without closing its connection (a cut
    # link, a powered-off host) are freed within 15 s instead of after TCP's two hours.
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # One process owns its port: a second one must fail to bind, not share it.
    ("grpc.so_reuseport", 0),
]


def error_status(exc: BaseException, method: str) -> status_pb2.Status:
    """The one translator: a catalogue error's code, message and details; INTERNAL (detail only in the log) otherwise.

    Bad input names its field (google.rpc.BadRequest); UNAVAILABLE tells when to retry (google.rpc.RetryInfo).
    """
    if not isinstance(exc, ShoalError):
        log.error("unexpected error in %s", method, exc_info=exc)
        exc = Internal(f"internal error in {method}; see the server log")
    elif exc.code is grpc.StatusCode.UNAVAILABLE and exc.retry_after is None:
        exc = error_for_code(exc.code, exc.message, field=exc.field, retry_after=RETRY_INITIAL_BACKOFF_S)
    return to_status(exc)


# gRPC's automatic retries (the SDK's service config) are for calls that never reached a server: a refused or
# reset connection. An answer of UNAVAILABLE comes after the server has waited out what was unavailable (a
# shard's detection budget), so a retry there would multiply the caller's wait; a negative pushback tells the
# client's gRPC not to retry, and RetryInfo tells the application when a retry may help.
_NO_AUTOMATIC_RETRY = ("grpc-retry-pushback-ms", "-1")


def abort_status(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]:
    """The code, message and trailing metadata (the rich status, as grpcio-status carries it) a call ends with."""
    status = rpc_status.to_status(error_status(exc, method))
    trailers = tuple(status.trailing_metadata)
    if status.code is grpc.StatusCode.UNAVAILABLE:
        trailers += (_NO_AUTOMATIC_RETRY,)
    return status.code, status.details, trailers


async def _translate(exc: BaseException, context: grpc.aio.ServicerContext, method: str) -> None:
    """Abort the call with the translated status."""
    await context.abort(*abort_status(exc, method))


class _Undecodable:
    """A request that did not decode (bad UTF-8 in a string field, truncated bytes): answered INVALID_ARGUMENT."""

    def __init__(self, exc: Exception) -> None:
        self.error = InvalidArgument(f"the request is not a valid message ({exc}); strings must be UTF-8")


def _decoder(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The deserializer, returning _Undecodable instead of raising (gRPC would answer UNKNOWN)."""
    if deserialize is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError as exc:
            return _Undecodable(exc)

    return decode


def _decoded(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise request.error
    return request


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request)


def _standard(method: str) -> bool:
    """Whether a method is of the standard services (health, reflection), which no interceptor touches."""
    return method.startswith(("/grpc.health", "/grpc.reflection"))


def _rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Any], Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]],
    streaming: Callable[[Any], Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]],
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped by `unary` (single answer) or `streaming` (answer stream)."""
    if handler.unary_unary or handler.stream_unary:
        fn: Any = unary(handler.unary_unary or handler.stream_unary)
        kind = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
    else:
        fn = streaming(handler.unary_stream or handler.stream_stream)
        kind = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
    return kind(fn, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """The same handler with errors translated and undecodable requests refused, for all four kinds of RPC."""
    passthrough = (asyncio.CancelledError, grpc.aio.AbortError)
    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary
        streamed = handler.stream_unary is not None

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(_decoded_stream(request) if streamed else _decoded(request), context)
            except passthrough:
                raise
            except Exception as exc:
                await _translate(exc, context, method)

        kind = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
    else:
        inner = handler.unary_stream or handler.stream_stream
        streamed = handler.stream_stream is not None

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:  # type: ignore[misc]
            try:
                async for item in inner(_decoded_stream(request) if streamed else _decoded(request), context):
                    yield item
            except passthrough:
                raise
            except Exception as exc:
                await _translate(exc, context, method)

        kind = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
    return kind(
        unary,
        request_deserializer=_decoder(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


class _MethodInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that wraps the handler of every method of Shoal's own services (not health, reflection)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or _standard(method):
            return handler
        return self.wrap(handler, method)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """The handler to run instead of `handler`."""
        raise NotImplementedError


class ErrorInterceptor(_MethodInterceptor):
    """Maps catalogue errors to their status codes on every RPC; hides unexpected ones behind INTERNAL."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """The handler with its errors translated."""
        return _wrap(handler, method)


_LIST_COLLECTIONS = "/ListCollections"


def _guarded(handler: grpc.RpcMethodHandler, method: str, verdict: Verdict) -> grpc.RpcMethodHandler:
    """The same handler refusing the call, or limited to the verdict's collections, for all four kinds of RPC."""
    refusal = error_for_code(verdict.code, verdict.message) if verdict.code is not None else None
    allowed = verdict.collections or frozenset()

    def check(request: Any) -> Any:
        if collection_of(request) not in allowed:
            raise PermissionDenied(f"this key may not use collection {collection_of(request)!r}")
        return request

    async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            yield check(request)

    if handler.unary_unary or handler.unary_stream:
        inner = handler.unary_unary or handler.unary_stream
        listing = method.endswith(_LIST_COLLECTIONS)

        def guard_request(request: Any) -> Any:
            if refusal is not None:
                raise refusal
            return request if listing else check(request)

    else:
        inner = handler.stream_unary or handler.stream_stream

        def guard_request(request: Any) -> Any:
            if refusal is not None:
                raise refusal
            return checked(request)

    if handler.unary_unary or handler.stream_unary:

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            reply = await inner(guard_request(request), context)
            if handler.unary_unary and method.endswith(_LIST_COLLECTIONS):
                # A key limited to some collections sees only those.
                kept = [n for n in reply.names if n in allowed]
                del reply.names[:]
                reply.names.extend(kept)
            return reply

        kind = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        call: Callable[..., Any] = unary
    else:

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in inner(guard_request(request), context):
                yield item

        kind = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        call = streaming
    return kind(
        call, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """The one access check of every RPC (see `shoal._access`): refusals and collection limits, deny by default.

    It runs inside the error interceptor, so its refusals become their status codes like any catalogue error.
    """

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        verdict = self.guard.decide(handler_call_details.method, handler_call_details.invocation_metadata)
        handler = await continuation(handler_call_details)
        if handler is None or (verdict.code is None and verdict.collections is None):
            return handler
        return _guarded(handler, handler_call_details.method, verdict)


class _Observed:
    """One RPC method's metric children, looked up once (a labels() call per RPC would cost a lock and a dict)."""

    def __init__(self, method: str) -> None:
        self.service, _, self.name = method[1:].rpartition("/")
        self.duration = RPC_DURATION.labels(self.service, self.name)
        self._counts: dict[str, Any] = {}

    def done(self, started: float, code: str) -> None:
        self.duration.observe(time.perf_counter() - started)
        counter = self._counts.get(code)
        if counter is None:
            counter = self._counts[code] = RPC_REQUESTS.labels(self.service, self.name, code)
        counter.inc()


def _code(context: grpc.aio.ServicerContext, failed: BaseException | None) -> str:
    """The status code the caller gets: the one set on the context (by an abort), else from the outcome."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(failed, asyncio.CancelledError):
        return "CANCELLED"
    return "OK" if failed is None else "UNKNOWN"


def _observe(handler: grpc.RpcMethodHandler, observed: _Observed) -> grpc.RpcMethodHandler:
    """The same handler, counted and timed into shoal_rpc_requests_total and shoal_rpc_duration_seconds."""

    def unary(inner: Any) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, failed = time.perf_counter(), None
            try:
                return await inner(request, context)
            except BaseException as exc:
                failed = exc
                raise
            finally:
                observed.done(started, _code(context, failed))

        return call

    def streaming(inner: Any) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started, failed = time.perf_counter(), None
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException as exc:
                failed = exc
                raise
            finally:
                observed.done(started, _code(context, failed))

        return call

    return _rewrap(handler, unary, streaming)


class MetricsInterceptor(_MethodInterceptor):
    """Counts and times every RPC of the Shoal services by its final status code (the translated one)."""

    def __init__(self) -> None:
        self._methods: dict[str, _Observed] = {}  # bounded by the services' methods

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """The handler counted and timed."""
        observed = self._methods.get(method)
        if observed is None:
            observed = self._methods[method] = _Observed(method)
        return _observe(handler, observed)


def _traced(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """The same handler inside a server span, a child of the caller's `traceparent` metadata."""

    def unary(inner: Any) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with _tracing.span(method, _tracing.from_metadata(context.invocation_metadata()), "server"):
                return await inner(request, context)

        return call

    def streaming(inner: Any) -> Any:
        return inner

    return _rewrap(handler, unary, streaming)


class TracingInterceptor(_MethodInterceptor):
    """A server span per RPC with a single answer; a stream of answers is traced per message by its servicer
    (its messages belong to different traces)."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """The handler inside a span, unless it answers with a stream."""
        if handler.unary_stream or handler.stream_stream:
            return handler
        return _traced(handler, method)


def aio_server(guard: Guard | None = None, metrics: bool = False, reuse_port: bool = False) -> grpc.aio.Server:
    """An asyncio server with Shoal's options, the error translator, (unless `guard` is open) the auth check, and
    RPC metrics and spans when they are on; with `reuse_port`, other processes may serve its port too."""
    # The first interceptor is the outermost: metrics see the status the error translator chose (refusals
    # included), and spans cover the translation.
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor()] if metrics else []
    if _tracing.ENABLED:
        interceptors.append(TracingInterceptor())
    interceptors.append(ErrorInterceptor())
    if guard is not None and not guard.open:
        interceptors.append(AuthInterceptor(guard))
    options = SERVER_OPTIONS
    if reuse_port:
        options = [(name, 1 if name == "grpc.so_reuseport" else value) for name, value in SERVER_OPTIONS]
    return grpc.aio.server(interceptors=interceptors, options=options)


@dataclass(frozen=True)
class ServerTLS:
    """A server's certificate and key (PEM files) and, for mutual TLS, the CA its clients' certificates need.

    The files are read again when they change (checked on each new connection): a renewed certificate is
    served without a restart.
    """

    cert: Path
    key: Path
    client_ca: Path | None = None

    def _files(self) -> list[Path]:
        return [self.cert, self.key, *([self.client_ca] if self.client_ca else [])]

    def _stamps(self) -> list[int]:
        return [p.stat().st_mtime_ns for p in self._files()]

    def _config(self) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
        )

    def credentials(self) -> grpc.ServerCredentials:
        """grpc's server credentials, reloading the files when they change."""
        seen = [self._stamps()]

        def fetch() -> Any:
            try:
                stamps = self._stamps()
                if stamps == seen[0]:
                    return None
                config = self._config()
            except OSError as exc:  # a half-renewed pair keeps the certificate served so far
                log.error("cannot reload the TLS files %s: %s", self._files(), exc)
                return None
            seen[0] = stamps
            log.info("reloaded the TLS certificate %s", self.cert)
            return config

        return grpc.dynamic_ssl_server_credentials(
            self._config(), fetch, require_client_authentication=self.client_ca is not None
        )


@dataclass(frozen=True)
class ServerSecurity:
    """How a server is protected: TLS, who may call (the guard), and whether an unsafe setup was asked for."""

    tls: ServerTLS | None = None
    guard: Guard = field(default_factory=Guard)
    insecure: bool = False
    # HOST:PORT answering grpc.health.v1 alone in plaintext, for probes that cannot speak TLS (kubelet, Docker).
    probe_listen: str | None = None


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_safe(listen: str, security: ServerSecurity) -> None:
    """Refuse a non-loopback address without TLS and without auth unless `--insecure`; warn when it is given."""
    host = listen.rpartition(":")[0]
    if _loopback(host) or security.tls is not None or not security.guard.open:
        return
    if not security.insecure:
        raise SystemExit(
            f"refusing to serve {listen} without TLS and without authentication: anyone who reaches it could "
            "read and change everything. Give --tls-cert/--tls-key, --auth or --cluster-secret-file, or "
            "--insecure to run it unprotected anyway"
        )
    log.warning(
        "serving %s WITHOUT TLS AND WITHOUT AUTHENTICATION (--insecure): anyone who reaches it has full access", listen
    )


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


@functools.cache
def public_pool() -> descriptor_pool.DescriptorPool:
    """The public, readable definitions of shoal.v1 (packed numbers, JSON text), as reflection serves them.

    The Python modules are a bytes view of the same messages (scripts/gen_protos.py); reflection shows
    the public ones, so grpcurl and other languages see plain numbers and text.
    """
    pool = descriptor_pool.DescriptorPool()
    files = descriptor_pb2.FileDescriptorSet.FromString(
        resources.files("shoal.v1").joinpath("public.binpb").read_bytes()
    )
    for file in files.file:
        pool.Add(file)
    for module in (health_pb2, reflection_pb2):  # the standard services are reflected too
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    return pool


def add_standard_services(server: grpc.aio.Server, service_names: Iterable[str]) -> health.aio.HealthServicer:
    """Add grpc.health.v1 (starting NOT_SERVING) and server reflection v1 and v1alpha; return the health servicer."""
    servicer = health.aio.HealthServicer()
    # grpc's servicer starts the overall status as SERVING; a process is not serving until it says so.
    _finish_now(servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflecting = reflection.aio.ReflectionServicer(names, pool=public_pool())
    handler = grpc.stream_stream_rpc_method_handler(
        reflecting.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    # v1 and v1alpha are the same messages under two service names: newer clients (grpcurl >= 1.8.8,
    # Postman) ask v1 first, older ones v1alpha.
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler})
            for name in (REFLECTION_V1, reflection.SERVICE_NAME)
        ]
    )
    return servicer


async def serve_probes(listen: str | None, servicer: health.aio.HealthServicer) -> grpc.aio.Server | None:
    """Start a plaintext server of `servicer` (health alone: no data, no other service) on `listen`, if given."""
    if listen is None:
        return None
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bind(server, listen)
    await server.start()
    return server


def _finish_now(step: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never waits to its end, outside the event loop."""
    # Setting a status waits only for the lock of a service somebody watches; before the server starts
    # nobody can watch, so the public `set` finishes at its first step.
    try:
        step.send(None)
    except StopIteration:
        return
    step.close()
    raise RuntimeError("setting the health status had to wait: call this before the server starts")


async def set_serving(servicer: health.aio.HealthServicer, service_names: Iterable[str], serving: bool) -> None:
    """Set the overall health and every named service's health at once."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *service_names]:
        await servicer.set(name, status)


def bind(server: grpc.aio.Server, listen: str, tls: ServerTLS | None = None, reuse_port: bool = False) -> str:
    """Bind `listen` (port 0 picks a free port), over TLS when given, and return the real address.

    With `reuse_port` the port is expected to be shared (held by the parent of `--workers`): not checked first.
    """
    host, _, port = listen.rpartition(":")
    if not reuse_port and port.isdigit() and (problem := port_problem(host, int(port))):
        raise SystemExit(f"cannot listen on {listen!r}: the port is {problem}")
    try:
        bound = server.add_secure_port(listen, tls.credentials()) if tls else server.add_insecure_port(listen)
    except RuntimeError:
        bound = 0
    if bound == 0 or not host or not port.isdigit():
        raise SystemExit(f"cannot listen on {listen!r}: give HOST:PORT of a free port on this machine")
    return f"{host}:{bound}"


async def wait_for_signal() -> None:
    """Return when SIGTERM or SIGINT arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
