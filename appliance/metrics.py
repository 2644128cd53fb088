"""Prometheus collectors (names prefixed `appliance_`, labels bounded: never an id or an address).

Counters and histograms are process-local and aggregated across gunicorn workers by prometheus-client's
multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set by `appliance serve` before the workers fork). Gauges that
describe shared state (audit size, pending requests, last attestation, policy) are computed at scrape time
from the database by `StateCollector`, so every worker reports the same truth.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

MINT_REQUESTS = Counter("appliance_mint_requests_total", "Mint requests by outcome.", ["outcome"])
MINT_APPROVALS = Counter("appliance_mint_approvals_total", "Mint approvals and rejections by outcome.", ["outcome"])
MINT_AUTHORIZATIONS = Counter("appliance_mint_authorizations_total", "Mint authorizations by outcome.", ["outcome"])
ATTESTATIONS = Counter("appliance_attestations_total", "Reserve attestations by trigger and outcome.",
                       ["trigger", "outcome"])
POLICY_CHANGES = Counter("appliance_policy_changes_total", "Policy bundle proposals and activations.", ["outcome"])
SIGNATURES = Counter("appliance_signatures_total", "HSM signatures by key and outcome.", ["key", "outcome"])
HSM_LATENCY = Histogram("appliance_hsm_operation_seconds", "Latency of HSM operations.", ["operation", "outcome"],
                        buckets=LATENCY_BUCKETS)
AUDIT_WRITE_FAILURES = Counter("appliance_audit_write_failures_total",
                               "Durable writes (audit entry, nonce reservation) that failed; nothing was signed.",
                               ["operation"])
INTEGRITY_FAILURES = Counter("appliance_integrity_failures_total",
                             "Checks of the store against the anchor and the heads in the HSM token that failed "
                             "(rollback, fork, rewrite); the appliance refused to act on it.", ["history"])
for _history in ("policy", "audit", "attestation", "mint"):  # mint: a stored authorization that does not verify
    INTEGRITY_FAILURES.labels(_history)  # exported at 0, so that increase() sees the first failure
AUDIT_SUPPRESSED = Counter("appliance_audit_suppressed_total",
                           "Refusals (bad signature, HSM or configuration fault) not written to the audit log because "
                           "more arrived than its rate limit allows; the next entry counts them.", ["action"])
RATE_LIMITED = Counter("appliance_rate_limited_total",
                       "Writes refused (429) because their client spent its budget of writes or of failed "
                       "authentications.", ["budget"])
AUTH_FAILURES = Counter("appliance_auth_failures_total", "Requests refused for a bad operator signature.",
                        ["reason"])
HTTP_REQUESTS = Counter("appliance_http_requests_total", "HTTP requests by route, method and status.",
                        ["route", "method", "status"])
HTTP_LATENCY = Histogram("appliance_http_request_duration_seconds", "HTTP request latency by route.",
                         ["route", "method"], buckets=LATENCY_BUCKETS)


def observe_hsm(operation: str, seconds: float, ok: bool) -> None:
    """The HSM adapter's observer hook."""
    HSM_LATENCY.labels(operation, "ok" if ok else "error").observe(seconds)


@dataclass(frozen=True)
class StateSnapshot:
    """Shared state read from the database at scrape time."""

    hsm_up: bool
    store_up: bool
    audit_entries: int
    checkpoint_size: int
    pending_requests: int
    last_attestation_time: float | None
    last_attestation_as_of: float | None
    coverage_ratio: float | None
    under_backed: bool | None
    policy_version: str
    policy_hash: str


class StateCollector(Collector):
    """Gauges computed from the database when Prometheus scrapes."""

    def __init__(self, snapshot: Callable[[], StateSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Any]:
        s = self._snapshot()
        yield GaugeMetricFamily("appliance_hsm_up", "1 if the HSM session answers.", value=int(s.hsm_up))
        yield GaugeMetricFamily("appliance_store_up", "1 if the store accepts a write transaction.",
                                value=int(s.store_up))
        yield GaugeMetricFamily("appliance_audit_entries", "Entries in the audit log.", value=s.audit_entries)
        yield GaugeMetricFamily("appliance_audit_checkpoint_size", "Tree size of the latest signed checkpoint.",
                                value=s.checkpoint_size)
        yield GaugeMetricFamily("appliance_mint_requests_pending", "Mint requests awaiting approval.",
                                value=s.pending_requests)
        if s.last_attestation_time is not None:
            yield GaugeMetricFamily("appliance_attestation_last_timestamp_seconds",
                                    "Issue time of the latest reserve attestation.", value=s.last_attestation_time)
        if s.last_attestation_as_of is not None:
            yield GaugeMetricFamily("appliance_attestation_as_of_timestamp_seconds",
                                    "The instant the latest reserve attestation's figures describe (its as_of).",
                                    value=s.last_attestation_as_of)
        if s.coverage_ratio is not None:
            yield GaugeMetricFamily("appliance_attestation_coverage_ratio",
                                    "Reserves over supply in the latest attestation (1.0 = fully backed).",
                                    value=s.coverage_ratio)
        if s.under_backed is not None:
            yield GaugeMetricFamily("appliance_attestation_under_backed",
                                    "1 if the latest attestation is UNDER_BACKED.", value=int(s.under_backed))
        info = InfoMetricFamily("appliance_policy", "The active policy bundle.")
        info.add_metric([], {"version": s.policy_version, "hash": s.policy_hash})
        yield info


def render(state: StateCollector | None) -> bytes:
    """The exposition text: this process's (or, in multiprocess mode, all workers') collectors plus state."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    text = generate_latest(registry)
    if state is not None:
        own = CollectorRegistry()
        own.register(state)
        text += generate_latest(own)
    return text
