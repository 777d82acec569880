"""A module a test allow-list names, holding what an attacker would try to reach through it.

Tests check that it is never imported while it is not allowed, and that builtin.call refuses
every name here that is not a function this module defines.
"""

from __future__ import annotations

import os  # noqa: F401 - a module object, reachable as tests.call_targets:os
from builtins import eval  # noqa: A004, F401 - a re-exported builtin
from os import getenv, system  # noqa: F401 - re-exported functions of another module
from subprocess import Popen  # noqa: F401 - a re-exported class of another module

IMPORTED = True


def double(x: int) -> int:
    return 2 * x
