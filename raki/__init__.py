"""raki: scan-specific neural MRI reconstruction (RAKI, GRAPPA), a library free of CLI and cloud."""

__version__ = "0.1.0"
