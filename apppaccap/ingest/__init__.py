"""Capture files in and out: ingest (a pcap/pcapng file becomes a FILE capture, with the
compiled scanner for the common packets) and export (a capture, a filtered capture or a
search's results become a pcapng file)."""
