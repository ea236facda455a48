"""Python peer of `sentiflow bench pipeline`: confluent-kafka + onnxruntime, the same ONNX model and
the same reviews, one intra-op thread, batches of up to 256.

Run by the Rust harness with the bench component of infra/setup.sh on PYTHONPATH. It reads reviews
that the harness already featurized with sentiflow's featurizer ({"review_id", "ids"}), because
re-implementing the featurizer in Python would measure a different algorithm: the peer does strictly
less work per message than sentiflow (no JSON-schema validation, no text featurization, no waiting for
acknowledgements before committing). Spec (argv[1]): {"brokers", "input", "output", "model", "count",
"group"}. Prints {"consumed": n, "seconds": s} when `count` messages were scored and flushed.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort
from confluent_kafka import Consumer, Producer

CLASSES = ["negative", "neutral", "positive"]
PAD_LENGTHS = [32, 64, 128, 256]


def main():
    spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
    model_meta = session.get_modelmeta().custom_metadata_map
    model = {"name": model_meta.get("name", ""), "version": model_meta.get("version", "")}
    consumer = Consumer(
        {
            "bootstrap.servers": spec["brokers"],
            "group.id": spec["group"],
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
        }
    )
    consumer.subscribe([spec["input"]])
    producer = Producer(
        {"bootstrap.servers": spec["brokers"], "enable.idempotence": True, "linger.ms": 5}
    )
    done = 0
    started = None
    while done < spec["count"]:
        messages = consumer.consume(num_messages=256, timeout=1.0)
        rows = [json.loads(m.value()) for m in messages if m.error() is None and m.value()]
        if not rows:
            continue
        if started is None:
            started = time.perf_counter()
        longest = max(1, max(len(row["ids"]) for row in rows))
        cols = next((length for length in PAD_LENGTHS if length >= longest), PAD_LENGTHS[-1])
        ids = np.zeros((len(rows), cols), dtype=np.int64)
        for index, row in enumerate(rows):
            features = row["ids"][:cols]
            ids[index, : len(features)] = features
        probabilities = session.run(None, {"input_ids": ids})[0]
        for row, p in zip(rows, probabilities):
            best = int(p.argmax())
            prediction = {
                "review_id": row["review_id"],
                "label": CLASSES[best],
                "confidence": float(p[best]),
                "probabilities": {name: float(value) for name, value in zip(CLASSES, p)},
                "model": model,
                "device": "cpu",
            }
            producer.produce(spec["output"], key=row["review_id"], value=json.dumps(prediction))
            producer.poll(0)
        done += len(rows)
    producer.flush()
    seconds = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    json.dump({"consumed": done, "seconds": seconds}, sys.stdout)


if __name__ == "__main__":
    main()
