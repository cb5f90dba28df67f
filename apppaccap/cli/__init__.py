"""The `apppaccap` command (main.py); ingest and export with a progress bar
(ingest_export.py); both talk to a running server through client.py."""
