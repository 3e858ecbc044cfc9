"""What only servers need: the server factory, the one error translator, the metrics and tracing interceptors,
health, reflection and signals.

`import shoal` never loads this module (a test checks it): clients need none of it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shoal import _tracing
from shoal._config import KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS, MAX_MESSAGE_BYTES
from shoal._errors import ShoalError
from shoal._metrics import RPC_DURATION, RPC_REQUESTS

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


def error_status(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """The one translator: a catalogue error's own code and message; INTERNAL (detail only in the log) otherwise."""
    if isinstance(exc, ShoalError):
        return exc.code, exc.message
    log.error("unexpected error in %s", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log"


async def _translate(exc: BaseException, context: grpc.aio.ServicerContext, method: str) -> None:
    """Abort the call with the translated status."""
    await context.abort(*error_status(exc, method))


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
    """The same handler with errors translated, for all four kinds of RPC."""
    passthrough = (asyncio.CancelledError, grpc.aio.AbortError)

    def unary(inner: Any) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(request, context)
            except passthrough:
                raise
            except Exception as exc:
                await _translate(exc, context, method)

        return call

    def streaming(inner: Any) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in inner(request, context):
                    yield item
            except passthrough:
                raise
            except Exception as exc:
                await _translate(exc, context, method)

        return call

    return _rewrap(handler, unary, streaming)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps catalogue errors to their status codes on every RPC; hides unexpected ones behind INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or _standard(method):
            return handler
        return _wrap(handler, method)


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


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC of the Shoal services by its final status code (the translated one)."""

    def __init__(self) -> None:
        self._methods: dict[str, _Observed] = {}  # bounded by the services' methods

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or _standard(method):
            return handler
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


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """A server span per RPC with a single answer; a stream of answers is traced per message by its servicer
    (its messages belong to different traces)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or _standard(method) or handler.unary_stream or handler.stream_stream:
            return handler
        return _traced(handler, method)


def aio_server(metrics: bool = False) -> grpc.aio.Server:
    """An asyncio server with Shoal's options and the error translator (and RPC metrics and spans when on)."""
    # The first interceptor is the outermost: metrics see the status the error translator chose, and spans
    # cover the translation.
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor()] if metrics else []
    if _tracing.ENABLED:
        interceptors.append(TracingInterceptor())
    interceptors.append(ErrorInterceptor())
    return grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)


def add_standard_services(server: grpc.aio.Server, service_names: Iterable[str]) -> health.aio.HealthServicer:
    """Add grpc.health.v1 (starting NOT_SERVING) and server reflection; return the health servicer."""
    servicer = health.aio.HealthServicer()
    # grpc's servicer starts the overall status as SERVING; a process is not serving until it says so.
    _finish_now(servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = list(service_names)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return servicer


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


def bind(server: grpc.aio.Server, listen: str) -> str:
    """Bind `listen` (port 0 picks a free port) and return the real address."""
    host, _, port = listen.rpartition(":")
    try:
        bound = server.add_insecure_port(listen)
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
