"""Sends HTTP access log records to Clientele with the official OpenTelemetry SDK's logs
pipeline and its OTLP/HTTP protobuf exporter (PyPI opentelemetry-sdk,
opentelemetry-exporter-otlp-proto-http; installed by scripts/test.sh).

  otel_logs.py ENDPOINT TOKEN    ENDPOINT is the full logs URL (.../v1/otlp/v1/logs)
"""

import logging
import sys

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

endpoint, token = sys.argv[1], sys.argv[2]
exporter = OTLPLogExporter(endpoint=endpoint, headers={"Authorization": f"Bearer {token}"})
provider = LoggerProvider(resource=Resource.create({"service.name": "petstore"}))
provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
log = logging.getLogger("access")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=provider))

# An access log record per request, the consumer in the configured attribute.
for i in range(4):
    log.info(
        "access",
        extra={
            "http.request.method": "GET",
            "url.path": f"/pets/{i}",
            "http.route": "/pets/{id}",
            "http.response.status_code": 500 if i == 3 else 200,
            "http.server.request.duration": 0.025,
            "client.address": "198.51.100.8",
            "user_agent.original": "otel-logs/1.0",
            "enduser.id": "umbrella",
        },
    )
# Not an access log: skipped.
log.info("cache warmed", extra={"cache.entries": 10})
# An access log without a consumer: refused, and counted in partial_success.
log.info("access", extra={"http.request.method": "GET", "url.path": "/x",
                          "http.response.status_code": 200, "duration_ms": 3})
provider.force_flush()
provider.shutdown()
