"""Every endpoint module, listed explicitly: importing one registers its endpoints, so each
import here is used by being made (hence the noqa)."""

from apppaccap.api import alerts  # noqa: F401
from apppaccap.api import captures  # noqa: F401
from apppaccap.api import extract  # noqa: F401
from apppaccap.api import fleet  # noqa: F401
from apppaccap.api import flush  # noqa: F401
from apppaccap.api import follow  # noqa: F401
from apppaccap.api import groupby  # noqa: F401
from apppaccap.api import ingest_export  # noqa: F401
from apppaccap.api import ips  # noqa: F401
from apppaccap.api import labels  # noqa: F401
from apppaccap.api import login  # noqa: F401
from apppaccap.api import monitor  # noqa: F401
from apppaccap.api import packet_filter  # noqa: F401
from apppaccap.api import packets  # noqa: F401
from apppaccap.api import processes  # noqa: F401
from apppaccap.api import search  # noqa: F401
from apppaccap.api import settings  # noqa: F401
from apppaccap.api import stats  # noqa: F401
from apppaccap.api import system  # noqa: F401
from apppaccap.api import triggers  # noqa: F401
from apppaccap.api import usage  # noqa: F401
from apppaccap.api import usage_remote  # noqa: F401
