#!/usr/bin/env python3
"""Two commands on a fresh machine with only Python 3.11+:

    python3 dev.py demo    # create .venv if needed, install, run the demo against the local sandbox
    python3 dev.py test    # create .venv if needed, install with the test extra, run the test suite

Anything after the command is passed on (e.g. `python3 dev.py test -k webhooks`). The suite runs as
`pytest --durations=15`: the 15 slowest tests are listed at the end (CI runs this same command).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("BUTTONCAST_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".buttoncast-installed"
PYTEST_ARGS = ("--durations=15",)   # the 15 slowest tests, printed after every run (issue 25)


def ensure_venv() -> None:
    """Create the virtualenv and (re)install when pyproject.toml changed since the last install."""
    if sys.version_info < (3, 11):
        sys.exit(f"buttoncast needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print(f"creating virtualenv {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing buttoncast with its test extra (first run only)", file=sys.stderr)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__, file=sys.stderr)
        return 2
    ensure_venv()
    command, rest = argv[0], argv[1:]
    if command == "test":
        return subprocess.call([str(BIN / "python"), "-m", "pytest", *PYTEST_ARGS, *rest], cwd=ROOT)
    return subprocess.call([str(BIN / "buttoncast"), "demo", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
