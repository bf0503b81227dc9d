"""Repository-wide test set-up, applied before any test or notebook kernel starts.

Notebook kernels started by nbval inherit this process's environment, so this is where the test
run is kept away from a developer's real key (no credits can be spent by the test suite) and from
their real job history.
"""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    os.environ.pop("VYDRA_API_KEY", None)
    os.environ.pop("VYDRA_BASE_URL", None)
    os.environ["VYDRA_NB_HOME"] = tempfile.mkdtemp(prefix="vydra-nb-test-home-")
    os.environ.pop("VYDRA_NB_DOWNLOADS", None)
