"""The services' own count of answers, from their Prometheus ``grpc_server_handled_total``:
a gRPC error travels in trailers after an HTTP 200, so only the server can say how many
calls failed."""

from __future__ import annotations

import urllib.request
from collections import Counter
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Handled", "handled", "scrape"]

# (service, method, code) -> answers so far
Handled = Counter[tuple[str, str, str]]


def handled(exposition: str) -> Handled:
    counts: Handled = Counter()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "grpc_server_handled_total":
                labels = sample.labels
                key = (labels["grpc_service"], labels["grpc_method"], labels["grpc_code"])
                counts[key] += int(sample.value)
    return counts


def scrape(urls: Iterable[str]) -> Handled:
    """Every service's counts, added up (each service names its own gRPC service)."""
    total: Handled = Counter()
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 (loopback URL)
            total.update(handled(reply.read().decode()))
    return total
