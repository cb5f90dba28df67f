"""Every action module, listed explicitly (importing one registers its actions)."""

from apppaccap.api import processes  # noqa: F401
from apppaccap.api import session  # noqa: F401
from apppaccap.api import settings  # noqa: F401
from apppaccap.api import system  # noqa: F401

MODULES = (system, session, settings, processes)
