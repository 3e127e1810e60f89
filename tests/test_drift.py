"""Drift statistics against reference computations, and the alert path."""

from __future__ import annotations

import json
import re
import sqlite3
from itertools import pairwise
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import sqlite_utils
from pydantic import ValidationError
from sqlite_utils.db import Table

from edgefleet.agent.serving.model import load_model
from edgefleet.agent.telemetry.drift import ConfidenceMonitor, DriftMonitor, InputDrift, max_confidence, psi
from edgefleet.compression.stats import confidence_stats, input_stats
from edgefleet.coordinator.health.alerts import compute_alerts
from edgefleet.coordinator.store import migrations
from edgefleet.coordinator.store.sqlite import SQLiteStore
from edgefleet.protocol.bundle import Manifest, extract_bundle, verify_manifest
from edgefleet.protocol.messages import Availability, Telemetry
from edgefleet.protocol.model_card import ConfidenceStats, InputStats
from edgefleet.protocol.signing import load_trusted_keys
from tests.conftest import DigitsModels, Keys, build

QUANTILES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def _stats(reference: np.ndarray) -> InputStats:
    rows = reference.reshape(len(reference), -1)
    return InputStats(
        samples=len(rows),
        quantiles=QUANTILES,
        edges=np.quantile(rows, QUANTILES, axis=0).T.tolist(),
        mean=rows.mean(axis=0).tolist(),
        std=rows.std(axis=0).tolist(),
    )


def test_psi_matches_the_textbook_formula() -> None:
    expected = np.array([0.25, 0.25, 0.25, 0.25])
    actual = np.array([0.1, 0.2, 0.3, 0.4])
    by_hand = sum((a - e) * np.log(a / e) for a, e in zip(actual, expected, strict=True))
    assert psi(expected, actual) == pytest.approx(by_hand)
    assert psi(expected, expected) == pytest.approx(0.0)


def test_bin_counts_match_numpy_histograms() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((2000, 3))
    drift = InputDrift(_stats(reference), window=300)
    sample = rng.standard_normal((300, 3)) + 0.5
    drift.observe(sample)
    edges = np.quantile(reference, QUANTILES, axis=0)
    for feature in range(3):
        counts = np.array([(sample[:, feature] <= edges[0, feature]).sum()] + [
            ((sample[:, feature] > lo) & (sample[:, feature] <= hi)).sum()
            for lo, hi in zip(edges[:-1, feature], edges[1:, feature], strict=True)
        ] + [(sample[:, feature] > edges[-1, feature]).sum()])  # fmt: skip
        expected = drift.expected[feature]
        assert drift.scores()[feature] == pytest.approx(float(psi(expected, counts / 300)))  # type: ignore[index]


def test_features_with_ties_score_no_drift_on_data_like_the_reference() -> None:
    # Digits pixels: many are always 0 and others take few values, so deciles tie. The bin shares
    # are counted at build time with the device's rule; from the quantiles alone the score read ~8.
    from edgefleet.compression.stats import input_stats
    from edgefleet.local.digits import load_digits_data

    data = load_digits_data()
    reference, _ = input_stats({"pixels": data.x_train})
    monitor = DriftMonitor(reference, window=400, min_rows=50)
    monitor.observe({"pixels": data.x_test[:400]})
    score, _ = monitor.score()
    assert score is not None and score < 0.1
    monitor.observe({"pixels": np.clip(data.x_test[:400] + 0.3, 0, 1)})  # a brighter camera
    shifted, _ = monitor.score()
    assert shifted is not None and shifted > 1.0


def test_the_score_rises_with_a_shift_and_falls_back_as_the_window_slides() -> None:
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((5000, 16)).astype(np.float32)
    monitor = DriftMonitor({"x": _stats(reference)}, window=400, min_rows=50)
    assert monitor.score() == (None, {})
    for _ in range(40):
        monitor.observe({"x": rng.standard_normal((10, 16)).astype(np.float32)})
    calm, _ = monitor.score()
    assert calm is not None and calm < 0.1
    shifted = rng.standard_normal((400, 16)).astype(np.float32)
    shifted[:, 3] += 2.0  # one feature moves by two standard deviations
    monitor.observe({"x": shifted})
    score, worst = monitor.score()
    assert score is not None and score > calm
    assert next(iter(worst)) == "x[3]" and worst["x[3]"] > 1.0
    for _ in range(40):
        monitor.observe({"x": rng.standard_normal((10, 16)).astype(np.float32)})
    again, _ = monitor.score()
    assert again is not None and again < 0.1, "old rows leave the window"


def test_inputs_without_statistics_or_of_another_shape_are_ignored() -> None:
    rng = np.random.default_rng(2)
    monitor = DriftMonitor({"x": _stats(rng.standard_normal((100, 4)))}, min_rows=1)
    monitor.observe({"y": np.zeros((5, 4)), "x": np.zeros((5, 7))})
    assert monitor.score() == (None, {})


# -- output confidence ----------------------------------------------------------------------
def _logits(rng: np.random.Generator, rows: int, margin: float, classes: int = 10) -> np.ndarray:
    """Logits whose true class leads by about ``margin``: a large margin is a confident classifier."""
    logits = rng.standard_normal((rows, classes))
    logits[np.arange(rows), rng.integers(0, classes, rows)] += margin
    return logits.astype(np.float32)


def test_max_confidence_matches_explicit_softmax_sigmoid_and_probabilities() -> None:
    logits = _logits(np.random.default_rng(3), 50, 4.0).astype(np.float64)
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert max_confidence(logits, "softmax") == pytest.approx(softmax.max(axis=1))
    assert max_confidence(softmax, "probability") == pytest.approx(softmax.max(axis=1))
    assert max_confidence(logits, "sigmoid") == pytest.approx((1 / (1 + np.exp(-logits))).max(axis=1))
    assert max_confidence(np.array([[-1000.0, -2000.0]]), "sigmoid") == pytest.approx([0.0])


def test_confidence_stats_read_logits_and_probabilities_and_skip_other_outputs() -> None:
    logits = _logits(np.random.default_rng(4), 400, 3.0)
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    stats = confidence_stats("logits", logits)
    assert stats is not None and stats.kind == "softmax" and stats.classes == 10 and stats.samples == 400
    assert len(stats.edges) == 9 and sum(stats.expected) == pytest.approx(1.0, abs=1e-5)
    probabilities = confidence_stats("probs", softmax.astype(np.float32))
    assert probabilities is not None and probabilities.kind == "probability"
    assert probabilities.edges == pytest.approx(stats.edges, abs=1e-5), "the same confidences either way"
    for output in (logits[:, :1], logits[:, :, None], logits.astype(np.int64), logits[0], np.full((4, 3), np.nan)):
        assert confidence_stats("y", output) is None


def test_ties_at_one_confidence_keep_their_reference_share() -> None:
    # A saturated classifier puts most rows at the very same confidence: deciles collapse into one edge.
    confidences = np.concatenate([np.full(800, 1.0), np.linspace(0.3, 0.99, 200)])
    probabilities = np.stack([confidences, 1.0 - confidences], axis=1)
    stats = confidence_stats("p", probabilities)
    assert stats is not None and stats.kind == "probability" and len(stats.edges) < 9
    monitor = ConfidenceMonitor(stats, window=1000, min_rows=1)
    monitor.observe({"p": probabilities})
    assert monitor.score() == pytest.approx(0.0, abs=1e-6), "the reference itself does not drift"


def test_confidence_psi_matches_a_numpy_reference_computation() -> None:
    rng = np.random.default_rng(5)
    stats = confidence_stats("logits", _logits(rng, 2000, 4.0))
    assert stats is not None
    monitor = ConfidenceMonitor(stats, window=300, min_rows=50)
    live = _logits(rng, 300, 2.0)
    for batch in np.array_split(live, 30):
        monitor.observe({"logits": batch})
    probabilities = np.exp(live.astype(np.float64))
    confidence = (probabilities / probabilities.sum(axis=1, keepdims=True)).max(axis=1)
    edges = np.array(stats.edges)
    counts = np.array([(confidence <= edges[0]).sum()] + [
        ((confidence > lo) & (confidence <= hi)).sum() for lo, hi in pairwise(edges)
    ] + [(confidence > edges[-1]).sum()])  # fmt: skip
    assert monitor.counts().tolist() == counts.tolist()
    e, a = np.clip(stats.expected, 1e-4, None), np.clip(counts / 300, 1e-4, None)
    assert monitor.score() == pytest.approx(float(np.sum((a - e) * np.log(a / e))))


def test_less_confident_outputs_raise_the_score_and_it_falls_back_as_the_window_slides() -> None:
    rng = np.random.default_rng(6)
    stats = confidence_stats("logits", _logits(rng, 5000, 4.0))
    assert stats is not None
    monitor = ConfidenceMonitor(stats, window=400, min_rows=50)
    monitor.observe({"logits": _logits(rng, 49, 4.0)})
    assert monitor.score() is None, "too few rows to judge"
    for _ in range(40):
        monitor.observe({"logits": _logits(rng, 10, 4.0)})
    calm = monitor.score()
    assert calm is not None and calm < 0.1
    monitor.observe({"logits": _logits(rng, 400, 4.0) * 0.3})  # flatter logits: a less sure model
    unsure = monitor.score()
    assert unsure is not None and unsure > 1.0
    for _ in range(40):
        monitor.observe({"logits": _logits(rng, 10, 4.0)})
    again = monitor.score()
    assert again is not None and again < 0.1, "old rows leave the window"


def test_deferred_binning_counts_every_single_row_prediction_in_order() -> None:
    # Predictions are binned when a score is read; a read must still see the window's rows, in order, with
    # the values they had when predicted (the caller owns the returned array and may change it).
    rng = np.random.default_rng(8)
    stats = confidence_stats("logits", _logits(rng, 2000, 4.0))
    assert stats is not None
    monitor = ConfidenceMonitor(stats, window=100, min_rows=1)
    seen = []
    for row in _logits(rng, 250, 3.0):
        output = row[None].copy()
        monitor.observe({"logits": output})
        seen.append(output[0].copy())
        output[:] = 0.0
        if rng.random() < 0.05:  # reads at odd moments bin what waits
            last = np.array(seen[-100:])
            expected = np.bincount(np.searchsorted(stats.edges, max_confidence(last, "softmax")), minlength=10)
            assert monitor.counts().tolist() == expected.tolist()
    last = np.array(seen[-100:])
    expected = np.bincount(np.searchsorted(stats.edges, max_confidence(last, "softmax")), minlength=10)
    assert monitor.rows == 100 and monitor.counts().tolist() == expected.tolist()
    assert monitor.score() == pytest.approx(float(psi(np.array(stats.expected), expected / 100)))


def test_input_rows_wait_for_the_score_and_only_the_window_is_binned() -> None:
    rng = np.random.default_rng(9)
    reference = rng.standard_normal((2000, 5))
    drift = InputDrift(_stats(reference), window=120)
    seen = []
    for _ in range(400):
        row = rng.standard_normal((1, 5)) + 0.3
        drift.observe(row)
        seen.append(row[0].copy())
        row[:] = 99.0  # the caller reuses its array
        if rng.random() < 0.03:
            drift.counts()
    last = np.array(seen[-120:])
    edges = np.quantile(reference, QUANTILES, axis=0)
    expected = np.stack([np.bincount((last[:, f, None] > edges[:, f]).sum(axis=1), minlength=12) for f in range(5)])
    assert drift.rows == 120 and drift.counts().tolist() == expected.tolist()


def test_a_wide_input_is_watched_through_an_even_spread_of_its_features() -> None:
    from edgefleet.agent.telemetry.drift import MAX_FEATURES

    rng = np.random.default_rng(10)
    reference = rng.standard_normal((500, 3072)).astype(np.float32)  # a 32x32x3 image's pixels
    monitor = DriftMonitor({"image": _stats(reference)}, window=200, min_rows=50)
    watched = monitor.inputs["image"].watched
    assert len(watched) == MAX_FEATURES and watched[0] == 0 and watched[-1] == 3071
    assert np.all(np.diff(watched) >= 11), "evenly spread"
    live = rng.standard_normal((200, 3072)).astype(np.float32)
    live[:, watched[100]] += 3.0  # one watched pixel moves
    monitor.observe({"image": live.reshape(200, 32, 32, 3)})
    score, worst = monitor.score()
    assert score is not None and next(iter(worst)) == f"image[{watched[100]}]", worst


def test_outputs_the_reference_does_not_describe_are_ignored() -> None:
    stats = confidence_stats("logits", _logits(np.random.default_rng(7), 100, 4.0))
    assert stats is not None
    monitor = ConfidenceMonitor(stats, min_rows=1)
    monitor.observe({"other": np.zeros((5, 10)), "logits": np.zeros((5, 7))})
    monitor.observe({"logits": np.zeros((5, 10, 1))})
    assert monitor.rows == 0 and monitor.score() is None


def _digits_with_references(tmp_path: Path, keys: Keys, digits: DigitsModels) -> tuple[Manifest, str, np.ndarray]:
    """A verified digits bundle whose manifest carries the input and confidence statistics of the first 225
    test images (extracted under ``tmp_path / "files"``): its manifest, its digest, and the other images."""
    session = ort.InferenceSession(str(digits.v1), providers=["CPUExecutionProvider"])
    reference, live = digits.x_test[:225], digits.x_test[225:]
    stats, _ = input_stats({"pixels": reference})
    confidence = confidence_stats("logits", session.run(["logits"], {"pixels": reference})[0])
    archive, digest = build(
        digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0", reference_stats=stats, reference_confidence=confidence
    )
    signed = extract_bundle(archive, tmp_path / "files")
    return verify_manifest(signed, load_trusted_keys([keys.public])), digest, live


def test_a_digits_bundle_carries_its_reference_confidence_and_the_agent_scores_it(
    tmp_path: Path, keys: Keys, digits: DigitsModels
) -> None:
    manifest, digest, live = _digits_with_references(tmp_path, keys, digits)
    confidence = manifest.reference_confidence
    assert confidence is not None and manifest.reference_stats is not None
    assert confidence.kind == "softmax" and confidence.classes == 10 and confidence.samples == 225

    def scores(rows: np.ndarray) -> tuple[float | None, float | None]:
        model = load_model(digest, manifest, tmp_path / "files" / manifest.model_file, drift_window=225)
        assert model.confidence_drift is not None and model.drift is not None
        assert model.confidence_drift.rows == 0, "the self-test's vectors are no traffic"
        for batch in np.array_split(rows, 45):
            model.predict({"pixels": batch})
            model.drift.observe({"pixels": batch})  # as the API does for every request
        return model.drift.score()[0], model.confidence_drift.score()

    input_calm, confidence_calm = scores(live)
    # Every pixel keeps its distribution across the rows, but the images no longer look like digits.
    rng = np.random.default_rng(8)
    shuffled = np.stack([rng.permutation(column) for column in live.T], axis=1)
    input_shuffled, confidence_shuffled = scores(shuffled)
    assert input_shuffled == pytest.approx(input_calm), "the same marginals: input PSI cannot see it"
    assert confidence_calm is not None and confidence_calm < 0.25
    assert confidence_shuffled is not None and confidence_shuffled > 1.0, "a less sure model"


def test_old_manifests_and_telemetry_without_the_fields_still_parse(
    tmp_path: Path, keys: Keys, digits: DigitsModels
) -> None:
    archive, _ = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    signed = extract_bundle(archive, tmp_path / "files")
    old = json.loads(signed.manifest)
    old.pop("reference_confidence")
    assert Manifest.model_validate(old).reference_confidence is None
    payload = Telemetry(device_id="gw-1", window_s=10.0, inference_count=1, error_count=0).model_dump(mode="json")
    payload.pop("confidence_drift_score")
    assert Telemetry.model_validate(payload).confidence_drift_score is None


def test_manifests_refuse_malformed_confidence_references(tmp_path: Path, keys: Keys, digits: DigitsModels) -> None:
    good = {"output": "logits", "kind": "softmax", "classes": 10, "samples": 10, "edges": [0.5, 0.9]}
    ConfidenceStats.model_validate(good | {"expected": [0.2, 0.3, 0.5]})
    for bad, reason in (
        ({"expected": [0.5, 0.5]}, "one per bin"),
        ({"expected": [0.2, 0.3, 0.6]}, "add up to 1"),
        ({"edges": [0.9, 0.5], "expected": [0.2, 0.3, 0.5]}, "ascend strictly"),
        ({"edges": [0.5, 1.5], "expected": [0.2, 0.3, 0.5]}, "lie in [0, 1]"),
        ({"kind": "logits", "expected": [0.2, 0.3, 0.5]}, "kind"),
    ):
        with pytest.raises(ValidationError, match=re.escape(reason)):
            ConfidenceStats.model_validate(good | bad)
    archive, _ = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    manifest = json.loads(extract_bundle(archive, tmp_path / "files").manifest)
    manifest["reference_confidence"] = good | {"output": "probs", "expected": [0.2, 0.3, 0.5]}
    with pytest.raises(ValidationError, match="not the model's"):
        Manifest.model_validate(manifest)
    manifest["reference_confidence"] = good | {"expected": [0.2, 0.3, 0.5], "extra": 1}
    with pytest.raises(ValidationError, match="extra"):
        Manifest.model_validate(manifest)


# -- the coordinator -------------------------------------------------------------------------
def test_the_drift_alert_names_the_kind_that_drifted(tmp_path: Path) -> None:
    db = SQLiteStore(tmp_path / "fleet.db")
    for device, scores in (
        ("gw-1", {"drift_score": 0.04, "confidence_drift_score": 0.61}),
        ("gw-2", {"drift_score": 0.5}),
    ):
        db.record_availability(Availability(device_id=device, state="online"))
        fields = {"device_id": device, "window_s": 10.0, "inference_count": 50, "error_count": 0, "drift_alert": True}
        db.add_telemetry(Telemetry.model_validate(fields | scores))

    alerts = {a.device_id: a.detail for a in compute_alerts(db) if a.kind == "drift"}

    assert alerts["gw-1"] == "drift score 0.610 in output confidence (the inputs 0.040)"
    assert alerts["gw-2"] == "drift score 0.500 in the inputs"
    assert db.telemetry("gw-1")[0]["confidence_drift_score"] == pytest.approx(0.61)


def test_the_migration_adds_confidence_drift_to_raw_telemetry_of_an_old_store(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    old = sqlite_utils.Database(sqlite3.connect(str(path), isolation_level=None))
    for version in range(1, 7):
        getattr(migrations, f"schema_{version}")(old)
    old.execute("pragma user_version = 6")
    Table(old, "telemetry").insert(
        {"message_id": "a" * 32, "device_id": "gw-1", "received_at": "2026-01-01T00:00:00+00:00"}
    )
    old.conn.close()

    db = SQLiteStore(path)

    with db.locked() as conn:
        assert conn.execute("pragma user_version").fetchone()[0] == SQLiteStore.SCHEMA_VERSION == 13
    [row] = db.telemetry("gw-1")
    assert "confidence_drift_score" in row and row["confidence_drift_score"] is None
    new = Telemetry(device_id="gw-1", window_s=1.0, inference_count=0, error_count=0, confidence_drift_score=0.3)
    assert db.add_telemetry(new)
    assert db.telemetry("gw-1")[0]["confidence_drift_score"] == pytest.approx(0.3)


def test_a_running_agents_telemetry_window_raises_the_drift_alert_and_reports_its_outbox(
    tmp_path: Path, keys: Keys, digits: DigitsModels
) -> None:
    from edgefleet.agent.config import AgentConfig
    from edgefleet.agent.daemon import Agent
    from edgefleet.agent.mqtt.outbox import Outbox
    from edgefleet.protocol.messages import parse
    from edgefleet.protocol.topics import Channel

    manifest, digest, live = _digits_with_references(tmp_path, keys, digits)
    config = AgentConfig.model_validate({
        "device_id": "gw-1", "device_class": "x86-gateway", "data_dir": tmp_path / "data",
        "trusted_keys": [keys.public], "drift": {"threshold": 0.25, "window": 225},
    })  # fmt: skip
    agent = Agent(config)
    agent.outbox = Outbox(tmp_path / "small-outbox.db", max_bytes=1 << 20, max_messages=3)  # a tiny bound
    try:

        def window_after(rows: np.ndarray) -> Telemetry:
            agent.model = load_model(digest, manifest, tmp_path / "files" / manifest.model_file, drift_window=225)
            for batch in np.array_split(rows, 45):  # as the local API serves and observes each request
                agent.model.predict({"pixels": batch})
                agent.stats.record(1.0)
                assert agent.model.drift is not None
                agent.model.drift.observe({"pixels": batch})
            return parse(Telemetry, agent.telemetry_window().to_bytes())  # as it goes out

        calm = window_after(live)
        rng = np.random.default_rng(8)
        shuffled = window_after(np.stack([rng.permutation(column) for column in live.T], axis=1))
        shifted = window_after(np.clip(live + 6.0, 0.0, 16.0))
        for _ in range(5):  # two more than the outbox holds: the oldest telemetry is evicted
            agent.outbox.put(Channel.TELEMETRY, calm)
        with_outbox = agent.telemetry_window()
    finally:
        agent.stop()

    assert not calm.drift_alert and calm.bundle_digest == digest and calm.inference_count == 45
    assert calm.drift_score is not None and calm.drift_score < 0.25
    assert shuffled.drift_alert, "the inputs' marginals hold, but the model is much less sure"
    assert shuffled.confidence_drift_score is not None and shuffled.confidence_drift_score > 1.0
    assert shuffled.drift_score == pytest.approx(calm.drift_score)
    assert shifted.drift_alert and shifted.drift_score is not None and shifted.drift_score > 0.25
    assert shifted.drift_features and max(shifted.drift_features.values()) > 0.25
    assert (with_outbox.outbox_pending, with_outbox.outbox_dropped) == (3, {"telemetry": 2})
    assert with_outbox.device_cpu_percent is not None and with_outbox.memory_used_percent is not None


def test_requests_observe_while_the_telemetry_thread_scores() -> None:
    import threading

    rng = np.random.default_rng(12)
    monitor = DriftMonitor({"x": _stats(rng.standard_normal((2000, 8)))}, window=300, min_rows=50)
    batches = [rng.standard_normal((1, 8)).astype(np.float32) for _ in range(3000)]
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            for batch in batches:
                monitor.observe({"x": batch})
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    requests = [threading.Thread(target=serve) for _ in range(4)]
    for thread in requests:
        thread.start()
    scores = []
    while any(thread.is_alive() for thread in requests):
        scores.append(monitor.score()[0])
    for thread in requests:
        thread.join()
    final, _ = monitor.score()

    assert not failures and monitor.inputs["x"].rows == 300, "the window holds the newest rows only"
    assert final is not None and final < 0.1 and all(s is None or s < 0.2 for s in scores)


def test_labelled_samples_reach_the_reported_state_within_one_telemetry_window(tmp_path: Path, keys: Keys) -> None:
    """Feedback sends no state of its own; a campaign selects devices by training_samples."""
    from edgefleet.agent.config import AgentConfig
    from edgefleet.agent.daemon import Agent
    from edgefleet.federated.client.data import load_samples
    from edgefleet.protocol.messages import ReportedState, parse
    from edgefleet.protocol.topics import Channel

    config = AgentConfig.model_validate({
        "device_id": "gw-1", "device_class": "x86-gateway", "data_dir": tmp_path / "data",
        "trusted_keys": [keys.public],
    })  # fmt: skip
    agent = Agent(config)
    try:
        agent.report()
        assert not agent.report_if_samples_changed()  # nothing new: no extra state message
        x, y = np.zeros((8, 64), np.float32), np.zeros(8, np.int64)
        agent.samples.add("r1", "d" * 64, {"pixels": x}, {"label": y})
        assert agent.report_if_samples_changed()
        queued = agent.outbox.pending(100)
        reported = [parse(ReportedState, m.payload) for m in queued if m.channel is Channel.REPORTED]
        # One unit everywhere: the 8 rows of the batch, as the campaign's client will train on them
        assert reported[-1].training_samples == agent.samples.count() == 8
        assert len(load_samples(tmp_path / "data" / "samples.db", input_name="pixels", label_name="label")) == 8
        assert not agent.report_if_samples_changed()
    finally:
        agent.stop()


def test_a_sample_store_from_before_rows_were_counted_counts_its_rows(tmp_path: Path) -> None:
    import sqlite3

    from edgefleet.agent.learning.samples import SampleStore, pack_arrays

    path = tmp_path / "samples.sqlite"
    old = sqlite3.connect(path)
    old.execute("create table samples (id text primary key, request_id text, bundle_digest text,"
                " created_at real, inputs blob, labels blob, size integer)")  # fmt: skip
    for n, rows in enumerate((8, 1)):
        x, y = np.zeros((rows, 4), np.float32), np.zeros(rows, np.int64)
        old.execute("insert into samples values (?, ?, ?, ?, ?, ?, ?)",
                    (f"s{n}", f"r{n}", "d" * 64, 0.0, pack_arrays({"x": x}), pack_arrays({"label": y}), 1))  # fmt: skip
    scalar = (pack_arrays({"x": np.zeros(4, np.float32)}), pack_arrays({"label": np.asarray(3)}))
    old.execute("insert into samples values ('s2', 'r2', ?, 0.0, ?, ?, 1)", ("d" * 64, *scalar))
    old.commit()
    old.close()
    store = SampleStore(path, max_age_s=1e12)
    try:
        assert store.count() == 10  # 8 + 1 + a scalar label's one row
    finally:
        store.close()
