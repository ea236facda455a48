"""fastText baseline of `sentiflow bench train`: trains on one thread and scores the evaluation files.

Run by the Rust harness with the bench component of infra/setup.sh on PYTHONPATH. Reads a JSON spec
(argv[1]): {"train": path, "evals": {name: path}, "params": {...}}; files are fastText-format lines
("__label__<class> <text>", the text already normalised by the harness). Writes one JSON object to
stdout: fastText's version, the training wall time, and per evaluation file the class probabilities
in the harness's class order, so both systems are scored by the same Rust code.
"""
import json
import sys
import time

import fasttext

CLASSES = ["negative", "neutral", "positive"]


def read_texts(path):
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n").split(" ", 1)[1] if " " in line else "" for line in handle]


def main():
    spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
    params = dict(spec["params"])
    params.update(input=spec["train"], thread=1, verbose=0)
    started = time.perf_counter()
    model = fasttext.train_supervised(**params)
    train_seconds = time.perf_counter() - started
    evals = {}
    for name, path in spec["evals"].items():
        texts = read_texts(path)
        started = time.perf_counter()
        labels, probabilities = model.predict(texts, k=len(CLASSES))
        seconds = time.perf_counter() - started
        rows = []
        for row_labels, row_probabilities in zip(labels, probabilities):
            by_class = dict(zip(row_labels, row_probabilities))
            rows.append([float(by_class.get("__label__" + name, 0.0)) for name in CLASSES])
        evals[name] = {"probabilities": rows, "predict_seconds": seconds}
    version = "unknown"
    try:
        from importlib.metadata import version as package_version

        version = package_version("fasttext-wheel")
    except Exception:  # noqa: BLE001 - the version is informative only
        pass
    json.dump(
        {
            "version": version,
            "train_seconds": train_seconds,
            "epochs": int(model.f.getArgs().epoch),
            "evals": evals,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
