"""The one exception type for mistakes a user can fix (docs/design/CONTRACTS.md section 6)."""

from __future__ import annotations


class UserError(Exception):
    """A bad argument, recipe, configuration, output folder, mask, checkpoint or missing dataset.

    The message is one line that names the fix; the CLI prints it and exits with status 2.
    Raised before anything in an existing run folder is overwritten.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
