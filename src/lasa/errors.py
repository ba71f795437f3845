"""The one exception type users see.

Anything raised as :class:`LasaError` is a problem with the user's input or environment that the
message alone can fix; the CLI prints it as a single line instead of a traceback. Every other
exception is a bug in lasa and keeps its traceback.
"""

from __future__ import annotations


class LasaError(Exception):
    """A user-fixable problem; ``str(err)`` is one line that names the fix."""
