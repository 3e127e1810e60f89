"""Fleet-level Prometheus figures, read from the fleet DB when ``/metrics`` is scraped: devices by class
and availability, devices per active bundle, the alerts that hold now by kind (all not silenced, those not
acknowledged, those silenced), rollouts by status,
and the telemetry ingest's own counters.

One ``CollectorRegistry`` per coordinator (``fleet_registry``), not prometheus-client's global one, so
that several coordinators in one process (tests) each report their own fleet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, get_args

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgefleet.coordinator.health.alert_actions import fleet_alerts
from edgefleet.coordinator.health.alerts import AlertKind

if TYPE_CHECKING:
    from edgefleet.coordinator.service import Coordinator

__all__ = ["FleetCollector", "fleet_registry"]


def fleet_registry(coordinator: Coordinator) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(coordinator))
    return registry


class FleetCollector(Collector):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def collect(self) -> Iterator[Metric]:
        yield from self._devices()
        yield from self._alerts()
        yield from self._rollouts()
        yield from self._ingest()

    def _devices(self) -> Iterator[Metric]:
        devices = self.coordinator.db.devices()
        by_state = Counter((d.get("device_class") or "unknown", d.get("availability") or "unknown") for d in devices)
        by_bundle = Counter(
            (active["name"], active["version"]) for d in devices if (active := (d.get("reported") or {}).get("active"))
        )
        family = GaugeMetricFamily(
            "edgefleet_fleet_devices", "Devices known to the coordinator, by class and availability",
            labels=["device_class", "availability"],
        )  # fmt: skip
        for (device_class, availability), count in sorted(by_state.items()):
            family.add_metric([device_class, availability], count)
        yield family
        family = GaugeMetricFamily(
            "edgefleet_fleet_devices_running", "Devices by the bundle they report active", labels=["model", "version"]
        )
        for (model, version), count in sorted(by_bundle.items()):
            family.add_metric([model, version], count)
        yield family

    def _alerts(self) -> Iterator[Metric]:
        # The configured thresholds, as GET /api/v1/alerts without overrides (a scrape also drops the
        # acknowledgments of alerts that cleared). Silenced alerts count only in their own gauge.
        views = fleet_alerts(self.coordinator.db, self.coordinator.config.alerts, configured=True)
        shown = [v for v in views if v.silenced_until is None]
        for name, help_text, counts in (
            ("edgefleet_fleet_alerts", "Alerts that hold now (the configured thresholds), by kind; silenced ones "
             "left out, acknowledged ones counted", Counter(v.alert.kind for v in shown)),
            ("edgefleet_fleet_alerts_unacknowledged", "Alerts that hold now, not silenced and not acknowledged, by "
             "kind", Counter(v.alert.kind for v in shown if v.acknowledged is None)),
            ("edgefleet_fleet_alerts_silenced", "Alerts that hold now but are silenced, by kind",
             Counter(v.alert.kind for v in views if v.silenced_until is not None)),
        ):  # fmt: skip
            family = GaugeMetricFamily(name, help_text, labels=["kind"])
            for kind in sorted(get_args(AlertKind)):  # every kind, 0 included: a rule sees 0, not an absent series
                family.add_metric([kind], counts[kind])
            yield family

    def _rollouts(self) -> Iterator[Metric]:
        counts = self.coordinator.db.rollouts.count_by_status()
        family = GaugeMetricFamily("edgefleet_rollouts", "Rollouts by status", labels=["status"])
        for status, count in sorted(counts.items()):
            family.add_metric([status], count)
        yield family

    def _ingest(self) -> Iterator[Metric]:
        link = self.coordinator.link
        ingest = link.ingest
        for name, help_text, value in (
            ("edgefleet_telemetry_reports_stored", "Telemetry reports stored (each message id once)", ingest.inserted),
            ("edgefleet_telemetry_duplicates", "Repeated deliveries of a stored report, not counted again",
             ingest.duplicates),
            ("edgefleet_telemetry_dropped", "Reports lost: the ingest queue stayed full, the store still failed "
             "at stop, or a report could not be stored", ingest.dropped),
            ("edgefleet_telemetry_receiver_restarts", "Telemetry receiver processes that died and were started "
             "again", link.ingest_link.restarts),
        ):  # fmt: skip
            yield CounterMetricFamily(name, help_text, value=value)
        yield GaugeMetricFamily(
            "edgefleet_telemetry_queue", "Reports received and waiting for the writer", value=ingest.pending
        )
        yield GaugeMetricFamily(
            "edgefleet_coordinator_broker_subscribed",
            "1 while both of the coordinator's MQTT connections are subscribed",
            value=int(link.subscribed.is_set()),
        )
