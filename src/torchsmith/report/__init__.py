"""What a run shows: its HTML report and comparisons, test-split predictions, plots, and the model summary."""

from torchsmith.report.html import write_comparison, write_report

__all__ = ["write_comparison", "write_report"]
