"""Debian tools some tests drive (chromium, docker-compose), installed by the tests themselves.

CI runs as root on a fresh machine: a missing tool is installed with apt-get there. Elsewhere a
missing tool skips the test that needs it, saying what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def ensure_debian_tool(binary: str, package: str) -> str:
    """The path of `binary`, installing Debian's `package` first when it is missing and we are root."""
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip(f"{binary} is not installed: apt-get install {package} (CI, as root, installs it itself)")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", package]
    done = subprocess.run(install, capture_output=True, text=True, env=environment, timeout=900)
    if done.returncode != 0:  # a fresh machine has no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=environment, timeout=600)
        done = subprocess.run(install, capture_output=True, text=True, env=environment, timeout=900)
    found = shutil.which(binary)
    if done.returncode != 0 or not found:
        pytest.fail(f"apt-get install {package} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return found
