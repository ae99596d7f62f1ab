"""mrictl: the CLI and orchestration around the raki library."""

__version__ = "0.1.0"
