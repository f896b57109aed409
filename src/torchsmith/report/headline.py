"""The parts of a run's report that answer first: the headline (test metric, best epoch, time,
status, doctor events), and text mistakes as a table, one sentence per row.

Example:
    >>> facts = headline_facts({"status": "completed", "test": {"accuracy": 0.9}, "epochs": 2}, 0)
    >>> facts[0]
    ('test accuracy', '0.9000')
"""

from __future__ import annotations

from html import escape
from typing import Any

import torch

HEADLINE_CSS = """.headline{font-size:1.15rem;border:0;margin:.5rem 0 1rem}.headline th,.headline td{
border:0;padding:.15rem 1rem .15rem 0}.headline th{color:#555;font-weight:normal;text-align:left}
table.texts td:nth-child(2){text-align:left;max-width:42rem}"""


def headline_facts(summary: dict[str, Any], doctor_events: int) -> list[tuple[str, str]]:
    """(label, value) pairs, most important first: the test metrics (else validation), the best
    epoch, the time, the status and the doctor's events."""
    split = "test" if summary.get("test") else "val"
    metrics = summary.get(split) or {}
    facts = [(f"{split} {k}", _number(v)) for k, v in sorted(metrics.items(), key=lambda kv: kv[0] == "loss")]
    best = summary.get("best") or {}
    monitored = [(k, v) for k, v in best.items() if k not in ("epoch", "step")]
    if "epoch" in best:
        what = f" ({monitored[0][0]} {_number(monitored[0][1])})" if monitored else ""
        facts.append(("best epoch", f"{int(best['epoch'])} of {summary.get('epochs', '?')}{what}"))
    if "train_time_s" in summary:
        rate = summary.get("samples_per_s")
        facts.append(("time", f"{summary['train_time_s']:.1f} s" + (f" ({rate:,.0f} samples/s)" if rate else "")))
    status = str(summary.get("status", "unknown"))
    reason = summary.get("stop_reason") or summary.get("error")
    facts.append(("status", f"{status}: {reason}" if reason else status))
    facts.append(("doctor events", f"{doctor_events} NaN/Inf step(s)" if doctor_events else "none"))
    return facts


def headline_html(summary: dict[str, Any], doctor_events: int) -> str:
    """The headline as a two-column table, with a sentence naming the model and data."""
    run = " on ".join(escape(str(summary[k])) for k in ("model", "data") if k in summary)
    rows = "".join(
        f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in headline_facts(summary, doctor_events)
    )
    return (f"<p>{run}</p>" if run else "") + f'<table class="headline" id="headline">{rows}</table>'


def text_mistakes_table(
    texts: list[str], indices: list[int], targets: torch.Tensor, probabilities: torch.Tensor, names: list[str]
) -> str:
    """One row per sentence: its index, the text, its true label, the prediction and its probability."""
    predicted = probabilities.argmax(dim=1)
    rows = []
    for text, index in zip(texts, indices, strict=True):
        guess = int(predicted[index])
        cells = [
            f"#{index}",
            text,
            names[int(targets[index])],
            names[guess],
            f"{float(probabilities[index, guess]):.2f}",
        ]
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("sample", "text", "true", "predicted", "probability"))
    return (
        f'<table class="texts" id="text-mistakes"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
