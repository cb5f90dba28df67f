"""FTP control/data tracking: synthetic sessions and the two corpus captures.

Oracle: ``tshark --export-objects ftp-data`` (4.0).

* ``ftp_bigtransfer.pcap`` samples a 5.4 GB download: 10 data segments
  survive and the sequence number wraps past 2**32 during the transfer.
  tshark exports the captured payloads concatenated in capture order (23822
  bytes).  We produce the same bytes, because holes wider than the stream
  buffer are skipped at once, and also report what is missing:
  ``missing_bytes`` = 5416642848, so size + missing = the 5416666670 bytes
  announced by ``SIZE``; ``complete`` is False.
* ``ftp_ipv6_retr.pcap`` fetches robots.txt twice, once over EPSV and once
  over EPRT (active mode, IPv6).  Documented difference: tshark 4.0 only ties
  the EPSV data connection to the control channel and exports one object; we
  export both transfers (same bytes).  Directory listings (LIST, NLST) are
  dropped by both tools.
"""

import hashlib
import os

from tests.helpers import corpus
from tests.helpers.extraction import SynthConn
from tests.helpers.extraction import body_of
from tests.helpers.extraction import extract
from tests.helpers.extraction import new_extractor
from tests.helpers.tshark import export_objects
from tests.helpers.tshark import needs_tshark

CLIENT, SERVER = ("10.0.0.1", 50000), ("10.0.0.2", 21)
FILE = os.urandom(5000) + b"tail"


def control(ex, conn_id=1):
    c = SynthConn(ex, conn_id, client=CLIENT, server=SERVER)
    c.server(b"220 FTP server ready\r\n")
    c.client(b"USER anonymous\r\n")
    c.server(b"230 Logged in\r\n")
    return c


def data_conn(ex, conn_id, client, server, payload, from_client):
    d = SynthConn(ex, conn_id, client=client, server=server)
    d.send(from_client, payload, 1000)
    d.close()


def test_pasv_retr(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = control(ex)
    c.client(b"SIZE pub/file.iso\r\n")
    c.server(b"213 5004\r\n")
    c.client(b"PASV\r\n")
    c.server(b"227 Entering Passive Mode (10,0,0,2,195,80).\r\n")
    # The data connection may open before RETR is sent.
    d = SynthConn(ex, 2, client=("10.0.0.1", 50001), server=("10.0.0.2", 195 * 256 + 80))
    c.client(b"RETR pub/file.iso\r\n")
    c.server(b"150 Opening BINARY mode data connection\r\n")
    d.server(FILE, 1000)
    d.close()
    c.server(b"226 Transfer complete\r\n")
    (ev,) = sink.events
    assert (ev.protocol, ev.direction, ev.file_name, ev.conn_id) == ("ftp-data", "download",
                                                                     "pub/file.iso", 2)
    assert body_of(ev) == FILE and ev.complete and ev.declared_size == 5004
    assert ev.sha256 == hashlib.sha256(FILE).hexdigest() and ev.host == "10.0.0.2"


def test_epsv_stor_upload(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = control(ex)
    c.client(b"EPSV\r\n")
    c.server(b"229 Entering Extended Passive Mode (|||40001|)\r\n")
    c.client(b"STOR ../../upload.bin\r\n")
    c.server(b"150 Ok to send data\r\n")
    data_conn(ex, 2, ("10.0.0.1", 50002), ("10.0.0.2", 40001), FILE, from_client=True)
    (ev,) = sink.events
    assert (ev.direction, ev.file_name, body_of(ev)) == ("upload", "../../upload.bin", FILE)


def test_port_active_mode(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = control(ex)
    c.client(b"PORT 10,0,0,1,200,10\r\n")
    c.server(b"200 PORT command successful\r\n")
    c.client(b"RETR a.txt\r\n")
    c.server(b"150 Opening data connection for a.txt (5004 bytes)\r\n")
    # The server connects from port 20 to the client's announced port.
    data_conn(ex, 2, ("10.0.0.2", 20), ("10.0.0.1", 200 * 256 + 10), FILE, from_client=True)
    (ev,) = sink.events
    assert (ev.direction, ev.file_name, ev.complete, ev.declared_size) == ("download", "a.txt",
                                                                          True, 5004)


def test_eprt_ipv6(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = SynthConn(ex, 1, client=("2001:db8::1", 50000), server=("2001:db8::2", 21))
    c.client(b"EPRT |2|2001:DB8:0:0::1|50010|\r\n")
    c.client(b"RETR six.txt\r\n")
    data_conn(ex, 2, ("2001:db8::2", 20), ("2001:db8::1", 50010), b"six", from_client=True)
    (ev,) = sink.events
    assert (ev.file_name, body_of(ev)) == ("six.txt", b"six")


def test_listing_is_not_a_file(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = control(ex)
    c.client(b"PASV\r\n")
    c.server(b"227 Entering Passive Mode (10,0,0,2,100,1)\r\n")
    c.client(b"LIST\r\n")
    data_conn(ex, 2, ("10.0.0.1", 50003), ("10.0.0.2", 100 * 256 + 1), b"-rw-r--r-- x\r\n", False)
    assert sink.events == []
    assert os.listdir(tmp_path / "spool") == []     # its spool file was removed


def test_nat_rewritten_pasv_address(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = control(ex)
    c.client(b"PASV\r\n")
    c.server(b"227 Entering Passive Mode (192,168,1,5,100,2)\r\n")    # private address
    c.client(b"RETR n.bin\r\n")
    data_conn(ex, 2, ("10.0.0.1", 50004), ("10.0.0.2", 100 * 256 + 2), b"natted", False)
    (ev,) = sink.events
    assert (ev.file_name, body_of(ev)) == ("n.bin", b"natted")


def test_short_transfer_is_incomplete(tmp_path):
    ex, sink = new_extractor(tmp_path)
    c = control(ex)
    c.client(b"PASV\r\n")
    c.server(b"227 Entering Passive Mode (10,0,0,2,100,3)\r\n")
    c.client(b"RETR big.bin\r\n")
    c.server(b"150 Opening BINARY mode data connection for big.bin (9000 bytes)\r\n")
    data_conn(ex, 2, ("10.0.0.1", 50005), ("10.0.0.2", 100 * 256 + 3), FILE, False)
    (ev,) = sink.events
    assert (ev.complete, ev.size, ev.missing_bytes) == (False, len(FILE), 9000 - len(FILE))


def test_unannounced_connection_is_not_ftp_data(tmp_path):
    ex, sink = new_extractor(tmp_path)
    data_conn(ex, 2, ("10.0.0.1", 50006), ("10.0.0.2", 30000), FILE, False)
    assert sink.events == []


@needs_tshark
def test_corpus_ftp_bigtransfer(tmp_path):
    """A sampled 5.4 GB download: 10 data segments survive, seq wraps past 2**32."""
    path = corpus.path("wellformed", "ftp_bigtransfer.pcap")
    (ev,) = extract(path, tmp_path / "spool")
    assert (ev.protocol, ev.direction, ev.file_name, ev.size) == ("ftp-data", "download",
                                                                  "rand.txt", 23822)
    # SIZE said 5416666670 bytes; everything not captured is counted as missing.
    assert ev.declared_size == 5416666670 and ev.size + ev.missing_bytes == 5416666670
    assert not ev.complete
    objs = export_objects(path, "ftp-data", str(tmp_path / "ts"))
    assert list(objs) == ["rand.txt"]
    assert hashlib.sha256(objs["rand.txt"]).hexdigest() == ev.sha256


@needs_tshark
def test_corpus_ftp_ipv6(tmp_path):
    """robots.txt fetched twice: over EPSV and over EPRT (active mode, IPv6).

    Documented difference: tshark 4.0 only ties the EPSV data connection to
    the control channel and exports one object; we export both transfers.
    Directory listings (LIST, NLST) are dropped by both.
    """
    path = corpus.path("wellformed", "ftp_ipv6_retr.pcap")
    events = extract(path, tmp_path / "spool")
    assert [(e.file_name, e.size, e.complete) for e in events] == [("robots.txt", 77, True)] * 2
    objs = export_objects(path, "ftp-data", str(tmp_path / "ts"))
    assert list(objs) == ["robots.txt"]
    assert {e.sha256 for e in events} == {hashlib.sha256(objs["robots.txt"]).hexdigest()}
