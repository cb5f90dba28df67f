"""Ship the top-level themes/ inside the package (apppaccap/themes) when building.

Everything else is in pyproject.toml; this only copies the themes into the build so
`pip install .` gives a working server with the default theme.
"""

import os
import shutil

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


setup(cmdclass={"build_py": BuildWithThemes})
