"""Shared fixtures of the gpuseg Python tests: the repository, the bundled example, the
package's own `gpuseg` command (the same build as the library the binding loads)."""

import os
import subprocess
from pathlib import Path

import pytest

import gpuseg

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "data" / "nuclei.png"
EXAMPLE_LABELS = REPO / "examples" / "data" / "nuclei_labels.png"
MASK_FIXTURES = REPO / "tests" / "fixtures" / "masks"


def run_cli(*args, env=None):
    """Runs the packaged `gpuseg` command; fails the test with its stderr on a non-zero exit."""
    proc = subprocess.run([gpuseg.cli_path(), *map(str, args)], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, f"gpuseg {' '.join(map(str, args))}: {proc.stderr}"
    return proc


@pytest.fixture(scope="session")
def segmenter():
    with gpuseg.Segmenter() as s:
        yield s


@pytest.fixture(scope="session")
def example():
    return gpuseg.imread(EXAMPLE)
