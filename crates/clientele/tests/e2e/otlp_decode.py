"""Decodes an OTLP/HTTP payload with the official protobuf definitions (PyPI opentelemetry-proto)
and prints it as JSON, trace and span ids in hex, for the end-to-end tests to check.

usage: otlp_decode.py traces|metrics|logs protobuf|json FILE
"""
import base64
import json
import sys

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

KINDS = {
    "traces": ExportTraceServiceRequest,
    "metrics": ExportMetricsServiceRequest,
    "logs": ExportLogsServiceRequest,
}
ID_KEYS = ("traceId", "spanId", "parentSpanId")


def ids(obj, convert):
    """Applies convert to every trace/span id in a dict tree."""
    if isinstance(obj, dict):
        return {k: (convert(v) if k in ID_KEYS and isinstance(v, str) else ids(v, convert)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [ids(v, convert) for v in obj]
    return obj


def unknown_count(m):
    try:
        from google.protobuf.unknown_fields import UnknownFieldSet

        return len(UnknownFieldSet(m))
    except ImportError:
        return len(m.UnknownFields())


def main():
    kind, fmt, path = sys.argv[1:4]
    msg = KINDS[kind]()
    data = open(path, "rb").read()
    if fmt == "protobuf":
        msg.ParseFromString(data)
        # Reject bytes the schema does not know: a wrong field number would land there.
        unknown = []

        def walk(m):
            if unknown_count(m):
                unknown.append(type(m).__name__)
            for fd, v in m.ListFields():
                if fd.message_type is None:
                    continue
                if hasattr(v, "ListFields"):
                    walk(v)
                else:  # a repeated field
                    for x in v:
                        if hasattr(x, "ListFields"):
                            walk(x)

        walk(msg)
        if unknown:
            sys.exit("unknown fields in: " + ", ".join(sorted(set(unknown))))
    else:
        # OTLP/JSON writes ids as hex; protobuf's canonical JSON mapping expects base64.
        doc = ids(json.loads(data), lambda h: base64.b64encode(bytes.fromhex(h)).decode())
        json_format.ParseDict(doc, msg)  # raises on any unknown field or wrong type
    out = json_format.MessageToDict(msg)
    out = ids(out, lambda b: base64.b64decode(b).hex())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
