"""`pip install .` must give a working apppaccap with the default theme inside the package."""

import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_ships_themes_and_console_script(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(tmp_path), ROOT], check=True, capture_output=True)
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    assert "apppaccap/themes/default/index.html" in names
    assert "apppaccap/themes/default/js/jquery-3.7.1.min.js" in names
    # eBPF attribution runs from the shipped object: no clang at install time
    assert "apppaccap/attribution/bpf/appattr.bpf.o" in names
    assert "apppaccap/attribution/bpf/vmlinux.h" not in names
    entry = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(tmp_path / wheel).read(entry[0]).decode()
    assert "apppaccap = apppaccap.cli.main:main" in text
