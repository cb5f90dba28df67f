"""Packet dissection: link layer to transport (decode), DNS, one-line summaries, and the
field values the search language reads from a packet's bytes. Pure functions, no I/O."""
