"""Many SIGKILLs during rollouts (tests/test_chaos.py runs 50): every restart must serve a verified model.

Run by hand: python bench/chaos_kill.py [--runs 300] [--model-mb 8] [--max-delay 0.8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from edgefleet.compression.builder import build_bundle
from edgefleet.local.broker import LocalBroker
from edgefleet.local.chaos import padded_identity_model, run_chaos
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.signing import load_private_key, write_keypair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--model-mb", type=float, default=8.0)
    parser.add_argument("--max-delay", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgefleet-chaos-"))
    print(f"working folder (logs of every process): {work}")
    if True:
        write_keypair(work, private_name="k.key", public_name="k.pub")
        key = load_private_key(work / "k.key")
        digests, bundles = [], []
        for i in range(2):
            model = padded_identity_model(work / f"m{i}.onnx", args.model_mb, seed=i)
            path, digest = build_bundle(
                model, work / f"m{i}.bundle", name="pad", version=str(i), device_class="x86-gateway", private_key=key
            )
            bundles.append(path)
            digests.append(digest)
        with LocalBroker(work / "broker") as broker:
            fleet = LocalFleet(work, broker.url, [work / "k.pub"])
            try:
                fleet.start_coordinator()
                fleet.add_agent("chaos-1", store={"crash_loop_restarts": 100, "crash_loop_window_s": 1.0})
                fleet.start_agent("chaos-1")
                wait_until(lambda: fleet.device("chaos-1"), timeout=30, what="agent")
                for bundle in bundles:
                    fleet.upload(bundle)
                fleet.deploy(digests[0], ["chaos-1"])
                fleet.wait_active(digests[0], ["chaos-1"])
                started = time.perf_counter()
                report = run_chaos(
                    fleet, "chaos-1", digests, runs=args.runs, max_delay_s=args.max_delay, seed=args.seed
                )
                elapsed = time.perf_counter() - started
            finally:
                fleet.stop()
    print(f"runs {report.runs} in {elapsed:.0f}s; model {args.model_mb} MB; kill delay 0-{args.max_delay}s")
    print(f"served after restart: {[(d[:12], n) for d, n in report.served.items()]}")
    print(f"median kill delay {statistics.median(report.delays_s):.3f}s; failures: {len(report.failures)}")
    for failure in report.failures[:20]:
        print("  ", failure)


if __name__ == "__main__":
    main()
