"""What every verb's handler returns and prints: an exit status and one answer."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

OK, UNHEALTHY, UNREACHABLE = 0, 1, 2


def emit(options: argparse.Namespace, text: str, data: Any) -> None:
    """Print a readable line, or JSON with --json."""
    out = json.dumps(data, default=str, sort_keys=True) if options.json else text
    sys.stdout.write(out + "\n")
