"""The package version, in one place: imported by the package, the checkpoint format and exports."""

__version__ = "0.1.0"
