"""Ship the top-level themes/ inside the package (apppaccap/themes) when building, and
compile the optional pcap-ingest fast paths (apppaccap/ingest/_pcapscan.c, and
apppaccap/store/_packedrows.c: the bulk writer's packet rows through SQLite's C API) and
usage accounting's counting (apppaccap/usage/_usagecount.c), and the live capture's
frame decoding (apppaccap/capture/_frames.c).

Everything else is in pyproject.toml. The extension is optional: without a C compiler
(or Python headers) the build goes on and ingest uses its pure-Python path.
"""

import os
import shutil

from setuptools import Extension
from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithThemes(build_py):
    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        src = os.path.join(here, "themes")
        dst = os.path.join(self.build_lib, "apppaccap", "themes")
        if os.path.isdir(src):
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)


setup(cmdclass={"build_py": BuildWithThemes},
      ext_modules=[Extension("apppaccap.ingest._pcapscan", ["apppaccap/ingest/_pcapscan.c"],
                             extra_compile_args=["-O2"], optional=True),
                   # packed packet rows through SQLite's C API (the bulk writer); needs
                   # sqlite3.h (libsqlite3-dev), else the writer binds them from Python
                   Extension("apppaccap.store._packedrows", ["apppaccap/store/_packedrows.c"],
                             libraries=["sqlite3"], extra_compile_args=["-O2"],
                             optional=True),
                   # the live capture's feeding thread (capture/sniffer.py frame_items)
                   Extension("apppaccap.capture._frames", ["apppaccap/capture/_frames.c"],
                             extra_compile_args=["-O2"], optional=True),
                   # the live pipeline's common packet recorded (capture/live.py _release)
                   Extension("apppaccap.capture._record", ["apppaccap/capture/_record.c"],
                             extra_compile_args=["-O2"], optional=True),
                   # usage accounting's per-packet counting off the GIL (usage/counting.py
                   # is the fallback); needs pcap.h (libpcap-dev)
                   Extension("apppaccap.usage._usagecount", ["apppaccap/usage/_usagecount.c"],
                             libraries=["pcap"], extra_compile_args=["-O2"],
                             optional=True)])
