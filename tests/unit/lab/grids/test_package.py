"""Package-level behaviour that only a fresh interpreter can show."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_twinlab_import_stays_light() -> None:
    # the server extension imports twinlab at every server start
    assert (
        _run("import sys, twinlab; print('numpy' in sys.modules, 'xarray' in sys.modules)")
        == "False False"
    )


def test_regrid_stays_the_function_after_the_subpackage_is_imported() -> None:
    code = (
        "import twinlab.grids.regrid.weights\n"  # loads the subpackage first
        "import twinlab.grids as tg\n"
        "from twinlab.grids import regrid\n"
        "print(callable(tg.regrid), regrid is tg.regrid, type(tg.regrid).__name__)"
    )
    assert _run(code) == "True True function"


def test_grids_import_does_not_load_the_regrid_machinery() -> None:
    code = "import sys, twinlab.grids as tg; print('twinlab.grids.regrid' in sys.modules, 'numba' in sys.modules)"
    assert _run(code) == "False False"
