"""Capture-file formats: pcap and pcapng records, their readers, the pcapng packet writer.

Formats only: nothing here knows captures, databases or the API (it imports only
apppaccap.errors, apppaccap.wire and apppaccap.filetime).
"""
