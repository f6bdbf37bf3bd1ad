"""UsageError: an argument a caller gave is invalid (an unknown choice, a value out of range).

It is a ValueError, so library callers catch it as one; the CLI answers it, and only it (with
argparse's own errors), with exit status 2: "fix the command line". A damaged stream, an
unreadable image or a missing file is a failure of the data, not of the command (exit 1).
"""

from __future__ import annotations


class UsageError(ValueError):
    """An invalid argument value."""
