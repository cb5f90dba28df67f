"""AppPacCap: per-application packet capture with an AJAX API."""

__version__ = "0.1.0"
