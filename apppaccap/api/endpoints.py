"""Every endpoint module, listed explicitly (importing one registers its endpoints)."""

from apppaccap.api import captures
from apppaccap.api import extract
from apppaccap.api import flush
from apppaccap.api import ingest_export
from apppaccap.api import ips
from apppaccap.api import login
from apppaccap.api import monitor
from apppaccap.api import packets
from apppaccap.api import processes
from apppaccap.api import search
from apppaccap.api import settings
from apppaccap.api import stats
from apppaccap.api import system
from apppaccap.api import triggers

MODULES = (system, login, settings, processes, captures, packets, ips, stats, flush,
           ingest_export, triggers, monitor, extract, search)
