"""`leek top`: a live view of the brokers, the queues, the tasks running and
the last failures, drawn anew every --interval seconds until q or Ctrl-C.

What it shows is gathered in snapshot.py and drawn in frame.py, with rich: an
optional extra (`pip install 'leek[top]'`). Without rich, one line says so
and the exit status is 2. `--once` prints one frame (plain text when stdout
is not a terminal) and exits with the status `leek stats` would give; with
`--json` it prints the snapshot instead, and needs no rich.

In a terminal the view takes the alternate screen, as `top` does, and reads
keys without blocking: stdin goes to cbreak mode (each key arrives at once,
unechoed; Ctrl-C still interrupts) and select() waits for one until the next
frame is due. Both are undone on the way out, whatever ends the view. When
stdout is not a terminal, the frames follow one another as plain text.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

from .output import OK

if TYPE_CHECKING:
    from rich.console import Console

    from .probe import Probe

#: The exit status when rich is not installed, as for a bad command line.
NO_RICH = 2
#: The keys that end the view.
QUIT_KEYS = frozenset("qQ")
KEYS_HELP = "q quits"


def add_top_arguments(parser: argparse.ArgumentParser) -> None:
    """--once and --interval."""
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one frame and exit (plain text when stdout is not a terminal)",
    )
    parser.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="seconds between frames (default: 1)",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds greater than zero, such as 1 or 0.5"
        )
    return value


def run_top(options: argparse.Namespace) -> int:
    """Show the view until q or Ctrl-C (exit 0); with --once or --json, one
    snapshot and `leek stats`'s exit status."""
    from .probe import Probe
    from .snapshot import gather

    probe = Probe()
    try:
        if options.json:
            snap = gather(probe)
            sys.stdout.write(json.dumps(dataclasses.asdict(snap), default=str) + "\n")
            return snap.status
        try:
            from rich.console import Console

            from . import frame
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] != "rich":
                raise
            sys.stderr.write("error: leek top needs rich: pip install 'leek[top]'\n")
            return NO_RICH
        console = Console(highlight=False)
        if options.once:
            snap = gather(probe)
            print_frame(console, frame.render(snap))
            return snap.status
        return watch(console, probe, options.interval)
    finally:
        probe.close()


def watch(console: Console, probe: Probe, interval: float) -> int:
    """Draw a frame every `interval` seconds until q, Ctrl-C or SIGTERM; 0."""
    from . import frame
    from .snapshot import gather

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with keys(sys.stdin) as wait, screen(console) as show:
            while True:
                height = console.size.height if console.is_terminal else None
                snap = gather(probe, *_rows(height))
                show(frame.render(snap, height, KEYS_HELP if console.is_terminal else ""))
                if wait(interval):
                    return OK
    except KeyboardInterrupt:
        return OK
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, stack: Any) -> None:
    """SIGTERM ends the view as Ctrl-C does, putting the terminal back."""
    raise KeyboardInterrupt


def _rows(height: int | None) -> tuple[int, int]:
    """How many running tasks and failures to read for a screen `height` lines tall."""
    if height is None:
        from .frame import FAILURE_ROWS, RUNNING_ROWS

        return RUNNING_ROWS, FAILURE_ROWS
    return height, height


def print_frame(console: Console, renderable: Any) -> None:
    """Print `renderable`; when stdout is not a terminal, as plain lines
    without the blanks that pad them."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    lines = captured.get().splitlines()
    sys.stdout.write("".join(line.rstrip() + "\n" for line in lines))
    sys.stdout.flush()


@contextmanager
def screen(console: Console) -> Iterator[Callable[[Any], None]]:
    """Something that shows a frame: on a terminal, in place on the alternate
    screen (left on exit); elsewhere, printed after the one before."""
    if not console.is_terminal:

        def printed(renderable: Any) -> None:
            print_frame(console, renderable)
            sys.stdout.write("\n")

        yield printed
        return
    from rich.live import Live

    with Live(console=console, screen=True, auto_refresh=False) as live:

        def drawn(renderable: Any) -> None:
            live.update(renderable, refresh=True)

        yield drawn


@contextmanager
def keys(stream: IO[str]) -> Iterator[Callable[[float], bool]]:
    """A wait of up to so many seconds that returns True early when a quit
    key is pressed. On a terminal, `stream` is in cbreak mode meanwhile and
    gets its mode back on exit, even on an exception; elsewhere it is not
    read, and the wait just sleeps."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        fd = -1
    if fd < 0 or not os.isatty(fd):

        def sleep(seconds: float) -> bool:
            time.sleep(seconds)
            return False

        yield sleep
        return
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd, termios.TCSANOW)
    try:

        def wait(seconds: float) -> bool:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([fd], [], [], left)
                if ready:
                    typed = os.read(fd, 64)
                    if not typed or QUIT_KEYS & set(typed.decode(errors="replace")):
                        return True  # q, or the terminal is gone
            return False

        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
