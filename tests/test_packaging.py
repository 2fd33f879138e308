"""`pip install .` must ship solvers/, layerwise/ and adapters/ inside the layertrim package."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_top_level_folders_into_the_package(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("layertrim-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("layertrim/api.py", "layertrim/solvers/sparsegpt.py",
                   "layertrim/solvers/refit.py", "layertrim/layerwise/__init__.py",
                   "layertrim/adapters/npz.py"):
        assert module in names
    top = {n.split("/")[0] for n in names}
    assert not top & {"solvers", "layerwise", "adapters", "tests", "bench"}
    entry = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry[0]).decode()
    assert "layertrim = layertrim.cli:main" in text
