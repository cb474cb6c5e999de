"""Sends HTTP server spans to Clientele with the official OpenTelemetry SDK and its OTLP/HTTP
protobuf exporter (PyPI opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http; installed
by scripts/test.sh).

  otel_spans.py ENDPOINT TOKEN    ENDPOINT is the full traces URL (.../v1/otlp/v1/traces)
"""

import sys
import time

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

endpoint, token = sys.argv[1], sys.argv[2]
exporter = OTLPSpanExporter(endpoint=endpoint, headers={"Authorization": f"Bearer {token}"})
provider = TracerProvider(resource=Resource.create({"service.name": "petstore"}))
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("clientele-e2e")

# Current semantic conventions, the consumer in a configured attribute.
for i in range(3):
    with tracer.start_as_current_span(
        "GET /pets/{id}",
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "GET",
            "url.path": f"/pets/{i}",
            "url.query": "full=1",
            "http.route": "/pets/{id}",
            "http.response.status_code": 200 if i < 2 else 503,
            "client.address": "198.51.100.7",
            "user_agent.original": "otel-e2e/1.0",
            "enduser.id": "acme",
        },
    ):
        time.sleep(0.02)

# Old conventions, the consumer in a captured request header (as Kong or Envoy set it).
with tracer.start_as_current_span(
    "POST",
    kind=SpanKind.SERVER,
    attributes={
        "http.method": "POST",
        "http.target": "/orders?x=1",
        "http.status_code": 201,
        "http.client_ip": "203.0.113.9",
        "http.user_agent": "legacy/2",
        "http.request.header.x-consumer-username": ("initech",),
    },
):
    time.sleep(0.01)

# Not an HTTP server span: skipped.
with tracer.start_as_current_span("SELECT pets", kind=SpanKind.CLIENT):
    pass

# A server span without a consumer: refused, and said so in partial_success.
with tracer.start_as_current_span(
    "GET /health",
    kind=SpanKind.SERVER,
    attributes={"http.request.method": "GET", "url.path": "/health", "http.response.status_code": 200},
):
    pass

provider.shutdown()
print("sent", flush=True)
