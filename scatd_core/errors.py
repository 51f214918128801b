"""Exceptions that carry a message written for the person using scATD Studio.

Every error raised on purpose by :mod:`scatd_core` derives from :class:`ScatdError`. Its
``message`` says what is wrong and its ``hint`` says what to do next; the CLI prints both on
one line each and exits non-zero, the app shows them in ``st.error``. When the next step is
done differently in the app (a page and a widget rather than a command and a flag), ``app_hint``
says it there and ``hint`` is for the CLI and Python. Nothing else should reach the user as a
traceback.
"""

from __future__ import annotations


class ScatdError(Exception):
    """Base class: a user-facing problem with a message and an optional next step."""

    def __init__(self, message: str, hint: str | None = None, *, app_hint: str | None = None,
                 app_message: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        #: the next step as the app's pages take it, when it differs from ``hint``
        self.app_hint = app_hint
        #: the message as the app says it, when it differs (e.g. "upload" where the CLI says "give")
        self.app_message = app_message

    def __str__(self) -> str:  # what the CLI and the app print
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class InputError(ScatdError):
    """The user's data file cannot be used as it is (format, content, size)."""


class DataNotScorable(InputError):
    """The input was read, but the model (or every model of a panel) cannot score it: too few of
    the model's genes, values of a kind it cannot take (z-scored), no cell scorable, none of its
    genes in the data, every drug of a panel refused. The command line exits with code 3 for it
    (2 for a usage error or a file that cannot be read), so a pipeline can tell "this sample
    cannot be scored" from "the command was wrong"."""


class MemoryShortage(InputError):
    """The server has too little memory free for this input now (other sessions hold it); the
    same input can be tried again later."""


class CheckpointError(ScatdError):
    """A model checkpoint is unreadable, unsafe, or does not match the expected layout."""


class BundleError(ScatdError):
    """A model bundle folder is missing files or is inconsistent."""


class DeviceError(ScatdError):
    """The requested compute device is not available."""


class Cancelled(ScatdError):
    """The user stopped a running computation; nothing was changed or saved."""
