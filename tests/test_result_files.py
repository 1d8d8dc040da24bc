"""RUN/metrics_per_class.csv: one row per class with its train count, groups and accuracies."""
from __future__ import annotations

import csv
import io
import json

from trainer.evaluate.files import per_class_csv, write_metrics
from trainer.evaluate.metrics import evaluate


def metrics_of() -> dict:
    counts = [40, 12, 6, 3]
    val = evaluate([0, 1, 2, 0], [0, 1, 2, 3], num_classes=4, train_counts=counts)
    val["classifiers"] = {"crt": evaluate([0, 1, 1, 3], [0, 1, 2, 3], num_classes=4, train_counts=counts)}
    test = evaluate([0, 0, 2], [0, 1, 2], num_classes=4, train_counts=counts)   # no class 3 sample
    return {"classes": ["T72", "BMP2", "2S1", "ZSU"], "stages": [], "final": {"val": val, "test": test}}, counts


def test_per_class_rows_name_counts_groups_and_every_split_and_classifier():
    metrics, counts = metrics_of()
    rows = list(csv.DictReader(io.StringIO(per_class_csv(metrics, counts))))
    assert list(rows[0]) == ["class_id", "class", "train_count", "group", "shot", "val_model", "val_crt",
                             "test_model"]
    assert [r["class"] for r in rows] == ["T72", "BMP2", "2S1", "ZSU"]
    assert [int(r["train_count"]) for r in rows] == counts
    assert rows[0]["group"] == "head" and rows[3]["group"] == "tail"
    assert rows[0]["shot"] == "medium" and rows[3]["shot"] == "few"
    assert rows[3]["val_model"] == "0.0000" and rows[3]["val_crt"] == "1.0000"
    assert rows[3]["test_model"] == "" and rows[1]["test_model"] == "0.0000"


def test_metrics_json_is_indented(tmp_path):
    metrics, counts = metrics_of()
    write_metrics(tmp_path, metrics, counts)
    text = (tmp_path / "metrics.json").read_text()
    assert text.count("\n") > 20 and json.loads(text) == json.loads(json.dumps(metrics))
    assert (tmp_path / "metrics_per_class.csv").read_text().startswith("class_id,class,train_count")
