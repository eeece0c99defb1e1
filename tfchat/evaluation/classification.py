"""Classification metrics: accuracy, macro-F1 and the confusion matrix, and
a classifier's predictions over a labelled dataset.

Example:
```python
report = classification_report([0, 1, 1], [0, 1, 0], labels=("a", "b"))
report["accuracy"], report["macro_f1"]   # 0.667, 0.667
print(format_report(report))
```
"""

import numpy as np
import tensorflow as tf



def confusion_matrix(true, predicted, num_classes):
    """[K, K] int counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(true, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


def classification_report(true, predicted, labels):
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion
    matrix of class ids `predicted` against `true`; `labels` names the ids.

    Macro-F1 averages F1 over the classes that occur in `true` or in
    `predicted` (as scikit-learn does by default): a class absent from the
    split and never predicted says nothing about the model. Precision or
    recall with a zero denominator is 0.
    """
    true, predicted = np.asarray(true, np.int64), np.asarray(predicted, np.int64)
    matrix = confusion_matrix(true, predicted, len(labels))
    hits = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    guessed = matrix.sum(axis=0)
    precision = np.divide(hits, guessed, out=np.zeros_like(hits), where=guessed > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(hits), where=total > 0)
    present = (support > 0) | (guessed > 0)
    return {
        "examples": int(len(true)),
        "accuracy": float(hits.sum() / max(len(true), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "labels": list(labels),
        "per_class": [
            {"label": label, "precision": float(precision[i]), "recall": float(recall[i]),
             "f1": float(f1[i]), "support": int(support[i])}
            for i, label in enumerate(labels)
        ],
        "confusion_matrix": matrix.tolist(),
    }


def format_report(report):
    """The report as text: the headline metrics, a per-class table, the
    confusion matrix (rows true, columns predicted, numbered as the table)
    and, with groups (`tfchat.evaluation.fairness`), a per-group table."""
    labels = report["labels"]
    width = max(len(label) for label in labels)
    lines = [
        f"examples {report['examples']}  accuracy {report['accuracy']:.4f}  "
        f"macro-F1 {report['macro_f1']:.4f}",
        "",
        f"{'#':>3} {'class':<{width}} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>7}",
    ]
    for i, row in enumerate(report["per_class"]):
        lines.append(
            f"{i:>3} {row['label']:<{width}} {row['precision']:>9.3f} "
            f"{row['recall']:>7.3f} {row['f1']:>7.3f} {row['support']:>7d}"
        )
    matrix = np.asarray(report["confusion_matrix"])
    cell = max(3, len(str(matrix.max())) + 1)
    lines += ["", "confusion matrix (rows: true class #, columns: predicted class #)",
              " " * 4 + "".join(f"{j:>{cell}}" for j in range(len(labels)))]
    for i, row in enumerate(matrix):
        lines.append(f"{i:>3} " + "".join(f"{v:>{cell}}" for v in row))
    if report.get("groups"):
        from tfchat.evaluation.fairness import format_groups

        lines += ["", format_groups(report["groups"])]
    return "\n".join(lines)


def predict_classes(model, dataset):
    """Runs a `TextClassifier` over a classification dataset ((x, labels)
    batches). Returns (true, predicted) class-id arrays."""
    predict = tf.function(lambda x: tf.argmax(model(x, training=False), axis=-1))
    true, predicted = [], []
    for x, labels in dataset:
        true.append(labels.numpy())
        predicted.append(predict(x).numpy())
    return np.concatenate(true), np.concatenate(predicted)
