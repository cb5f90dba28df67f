"""What the tests share (conftest.py holds the fixtures only):

- app: the application in this process (make_ctx, Ajax, as_this_process)
- corpus: where the pcap corpus is, and its manifest
- packets, pcapfiles: frames and capture files built by hand; an independent reader
- pcapgen, sample: generated captures (hostile payloads; the search tests' sample)
- tshark: the oracle
- extraction: the extraction tests' decoder, feeders and synthetic captures
- ports, server, door, httpjson: a real `apppaccap serve` and ways to talk to it
- live: tcpdump beside a capture, waiting, paging through actions
- browser: Chromium helpers, traffic makers
"""
