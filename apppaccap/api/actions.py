"""Every action module, listed explicitly (importing one registers its actions)."""

from apppaccap.api import captures
from apppaccap.api import extract
from apppaccap.api import flush
from apppaccap.api import ips
from apppaccap.api import monitor
from apppaccap.api import packets
from apppaccap.api import processes
from apppaccap.api import search
from apppaccap.api import session
from apppaccap.api import settings
from apppaccap.api import stats
from apppaccap.api import system
from apppaccap.api import transfer
from apppaccap.api import triggers

MODULES = (system, session, settings, processes, captures, packets, ips, stats, flush, transfer,
           triggers, monitor, extract, search)
