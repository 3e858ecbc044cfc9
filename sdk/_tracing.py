"""OpenTelemetry traces: off by default and then free (OpenTelemetry is not even imported, no span is made).

A search is one trace: the caller's span → the coordinator's RPC span → queue wait and fan-out → each
shard's search (queue wait, planner, index search) → merge. W3C trace context travels in gRPC metadata
(`traceparent`) on unary calls, and in `SearchRequest.traceparent` on search streams, whose messages
belong to different traces. A coalesced batch of searches is traced under its first search; the others
are linked to it.

Callers check `ENABLED` before doing anything here, so the hot paths cost one attribute read when off.
Needs the `tracing` extra: pip install 'shoal[tracing]'.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

ENABLED = False
HEADER = "traceparent"
_tracer: Any = None
_propagator: Any = None
_trace: Any = None  # the opentelemetry.trace module, once enabled


def wanted(endpoint: str | None) -> bool:
    """Whether tracing is asked for: an OTLP endpoint given, or the standard OTEL_* variables set."""
    return bool(
        endpoint
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(service: str, endpoint: str | None = None, sample_ratio: float | None = None) -> None:
    """Export this process's spans over OTLP/gRPC to `endpoint` (or where OTEL_* say), sampling `sample_ratio`."""
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        raise SystemExit("tracing needs the tracing extra: pip install 'shoal[tracing]'") from None
    # Without a ratio, OTEL_TRACES_SAMPLER(_ARG) decide (the SDK's default: every trace).
    sampler = ParentBased(TraceIdRatioBased(sample_ratio)) if sample_ratio is not None else None
    provider = TracerProvider(resource=Resource.create({"service.name": service}), sampler=sampler)
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter())
    )
    enable(provider)


def enable(provider: Any) -> None:
    """Trace with this TracerProvider (tests pass one with an in-memory exporter)."""
    global ENABLED, _tracer, _propagator, _trace
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _tracer = provider.get_tracer("shoal")
    _propagator = TraceContextTextMapPropagator()
    _trace = trace
    ENABLED = True


def disable() -> None:
    """Stop tracing (tests)."""
    global ENABLED
    ENABLED = False


def recording() -> bool:
    """Whether the current span is sampled: an unsampled request makes no spans beyond its first."""
    return ENABLED and bool(_trace.get_current_span().is_recording())


def sampled(traceparent: str) -> bool:
    """Whether a `traceparent` value says its trace is sampled (bit 0 of its trace flags, the last two hex digits)."""
    try:
        return bool(int(traceparent[-2:], 16) & 1)
    except ValueError:
        return False


def context_of(traceparent: str) -> Any:
    """The OpenTelemetry context a `traceparent` value names (the current one when it is empty)."""
    from opentelemetry import context

    if not traceparent:
        return context.get_current()
    return _propagator.extract({HEADER: traceparent})


def from_metadata(metadata: Sequence[tuple[str, Any]] | None) -> Any:
    """The context of an RPC's `traceparent` metadata (an empty context when it has none)."""
    carrier = {k: v for k, v in (metadata or ()) if k == HEADER and isinstance(v, str)}
    return _propagator.extract(carrier)


def traceparent(ctx: Any = None) -> str:
    """The `traceparent` value of a context (the current one by default); "" outside any span."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=ctx)
    return carrier.get(HEADER, "")


def metadata() -> list[tuple[str, str]]:
    """gRPC metadata carrying the current context, or nothing outside any span."""
    value = traceparent() if ENABLED else ""
    return [(HEADER, value)] if value else []


@contextmanager
def span(name: str, parent: Any = None, kind: str = "internal", links: Sequence[Any] = ()) -> Iterator[Any]:
    """A span, current while the block runs, as a child of `parent` (a context; default: the current one)."""
    kinds = {"internal": _trace.SpanKind.INTERNAL, "server": _trace.SpanKind.SERVER, "client": _trace.SpanKind.CLIENT}
    with _tracer.start_as_current_span(
        name, context=parent, kind=kinds[kind], links=[_trace.Link(c) for c in links]
    ) as current:
        yield current


def record(name: str, parent: Any, start_ns: int, end_ns: int, attributes: Mapping[str, Any] | None = None) -> None:
    """A finished span with the given times, as a child of `parent` (for work timed on another thread)."""
    done = _tracer.start_span(name, context=parent, start_time=start_ns, attributes=dict(attributes or {}))
    done.end(end_time=end_ns)


def span_context(ctx: Any) -> Any:
    """The span context a context holds (for links)."""
    return _trace.get_current_span(ctx).get_span_context()


def current_trace_id() -> str:
    """The current trace's id as 32 hex digits, or "" (always "" when tracing is off)."""
    if not ENABLED:
        return ""
    ctx = _trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else ""


def caller_traceparent() -> str:
    """In a client: the application's current trace context, when it uses OpenTelemetry; "" otherwise.

    Reads the global propagator, not this module's switch: tracing a client is the application's choice.
    Nothing is imported (and nothing costs) unless the application has loaded OpenTelemetry itself.
    """
    if "opentelemetry.context" not in sys.modules:
        return ""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(HEADER, "")
