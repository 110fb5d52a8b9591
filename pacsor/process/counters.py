"""Every Prometheus metric pacsor defines, in one registry (REGISTRY) that /metrics exposes.

Counters only count here; the admin API serves REGISTRY in the text format. Labels take
bounded values only (consumer names, reasons, SOP class names), never UIDs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry(auto_describe=True)

HANDLER_ERRORS = Counter(
    "pacsor_handler_errors",
    "Handler errors, each followed by a redelivery or by the step's failure event",
    ["consumer", "transient"],
    registry=REGISTRY,
)
STEPS_FAILED = Counter(
    "pacsor_steps_failed",
    "Messages given up after RETRY_MAX_ATTEMPTS handler errors, with a failure event recorded",
    ["consumer"],
    registry=REGISTRY,
)
ASSOCIATIONS_REJECTED = Counter(
    "pacsor_associations_rejected",
    "DICOM associations the SCP rejected, by reason",
    ["reason"],
    registry=REGISTRY,
)
CONTEXTS_REJECTED = Counter(
    "pacsor_presentation_contexts_rejected",
    "Presentation contexts refused in accepted associations (SOP class not in CONFIG_PROFILE)",
    ["sop_class"],
    registry=REGISTRY,
)
STORES_UNAVAILABLE = Counter(
    "pacsor_stores_unavailable",
    "C-STOREs answered 0xA700 because JetStream was unreachable or too slow",
    registry=REGISTRY,
)
DISPATCH_REFUSED = Counter(
    "pacsor_dispatch_objects_refused",
    "Result objects a destination refused with a permanent failure status",
    ["destination"],
    registry=REGISTRY,
)
SCP_CONNECTIONS_DROPPED = Counter(
    "pacsor_scp_connections_dropped",
    "DICOM connections the SCP cut off: a PDU too large or too slow, a failed TLS handshake, ...",
    ["reason"],
    registry=REGISTRY,
)
