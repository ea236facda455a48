"""River ADWIN baseline of `sentiflow bench drift`: one ADWIN per per-event signal, over the same events.

Run by the Rust harness with the River folder of infra/setup.sh --bench on PYTHONPATH. Reads a JSON
spec (argv[1]): {"delta": float, "signals": [name, ...], "scenarios": {name: path}}; each scenario
file has one line per event, in stream order, with one value in [0, 1] per signal (space-separated,
in the order of "signals"). Writes one JSON object to stdout: River's version, the ADWIN settings and,
per scenario and signal, the 0-based indices of the events at which ADWIN reported a change.
Malformed input is an error (exit status 1, the reason on stderr), never skipped.
"""
import json
import sys
import time

from river import drift


def fail(message):
    print(f"drift_adwin.py: {message}", file=sys.stderr)
    sys.exit(1)


def run_scenario(path, signals, delta):
    detectors = [drift.ADWIN(delta=delta) for _ in signals]
    detections = [[] for _ in signals]
    events = 0
    with open(path, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            values = line.split()
            if len(values) != len(signals):
                fail(f"{path} line {index + 1}: {len(values)} values, expected {len(signals)}")
            for column, (detector, value) in enumerate(zip(detectors, values)):
                try:
                    number = float(value)
                except ValueError:
                    fail(f"{path} line {index + 1}: {value!r} is not a number")
                if not 0.0 <= number <= 1.0:
                    fail(f"{path} line {index + 1}: {number} is outside [0, 1]")
                detector.update(number)
                if detector.drift_detected:
                    detections[column].append(index)
            events += 1
    return events, dict(zip(signals, detections))


def main():
    if len(sys.argv) != 2:
        fail("usage: drift_adwin.py SPEC.json")
    spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
    delta = float(spec["delta"])
    signals = list(spec["signals"])
    scenarios = {}
    for name, path in spec["scenarios"].items():
        started = time.perf_counter()
        events, detections = run_scenario(path, signals, delta)
        scenarios[name] = {
            "events": events,
            "detections": detections,
            "seconds": time.perf_counter() - started,
        }
    from importlib.metadata import version

    probe = drift.ADWIN(delta=delta)
    json.dump(
        {
            "version": version("river"),
            "settings": {
                "delta": probe.delta,
                "clock": probe.clock,
                "max_buckets": probe.max_buckets,
                "min_window_length": probe.min_window_length,
                "grace_period": probe.grace_period,
            },
            "scenarios": scenarios,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
