"""What a user error is: one base class for every error caused by input (a value, a file, a device).

The CLI prints these as one line and exits 2; anything else is a bug and shows its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the offending value and the fix, on one line."""


class DeviceError(UserError):
    """A device that does not exist on this machine."""
