"""pytest fixtures for testing workflows in process (workers/testing.py).

Registered as the pytest plugin ``canvasflow`` through the ``pytest11`` entry point, so a test
suite with canvasflow installed has them without an import. Nothing is imported until a test
asks for a fixture: a suite that never uses them pays nothing, and needs no fakeredis.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def canvasflow_plugins() -> Any:
    """The plugins of ``canvasflow_inline``'s worker besides builtin (classes decorated with
    ``@plugin``, or ``{name: class}``); None, the default, is what a worker would discover.
    Override it in a conftest.py."""
    return None


@pytest.fixture
def canvasflow_settings() -> Any:
    """The Settings ``canvasflow_inline`` starts from (call_allow, limits...); None: defaults.
    Override it in a conftest.py."""
    return None


@pytest.fixture
def canvasflow_inline(canvasflow_plugins: Any, canvasflow_settings: Any) -> Iterator[Any]:
    """``canvasflow_inline("etl.yaml", inputs={...})`` runs the workflow in this process and
    returns its RunSnapshot (an InlineRunner, closed after the test)."""
    from workers.testing import InlineRunner

    with InlineRunner(canvasflow_plugins, settings=canvasflow_settings) as runner:
        yield runner
