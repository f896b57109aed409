"""The doctor: a pre-flight check on one batch, NaN/Inf localisation, and a data scan.

`preflight` runs the model on the first batch before training and explains shape, label
and initial-loss mistakes in terms of the user's own layers (`preflight`, `shapes`).
`localize_nonfinite` replays a failing step to find where the first NaN or Inf appeared
(`nan_replay`), and `diagnose` turns that into a cause and advice (`diagnosis`).
`scan_data` checks a whole split (`data_scan`). The public names are importable from here.
"""

from torchsmith.doctor.data_scan import DataScanReport, scan_data, tensor_stats
from torchsmith.doctor.diagnosis import NanReport, diagnose
from torchsmith.doctor.nan_replay import localize_nonfinite
from torchsmith.doctor.preflight import Finding, preflight, raise_for_errors

__all__ = [
    "DataScanReport",
    "Finding",
    "NanReport",
    "diagnose",
    "localize_nonfinite",
    "preflight",
    "raise_for_errors",
    "scan_data",
    "tensor_stats",
]
