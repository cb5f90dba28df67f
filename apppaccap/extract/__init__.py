"""File extraction from TCP streams (HTTP/1.x bodies and FTP transfers).

Pure engine: no database, no web.  The capture pipeline feeds every TCP packet
to :class:`Extractor`; finished files come out as :class:`FileEvent` objects
whose bodies sit in spool files.  See :mod:`apppaccap.extract.engine`.
"""

from apppaccap.extract.engine import Extractor
from apppaccap.extract.engine import FileEvent
from apppaccap.extract.engine import safe_name
from apppaccap.extract.mime import sniff

__all__ = ["Extractor", "FileEvent", "safe_name", "sniff"]
