"""Fault tests: one module per class of fault, each case a real ``segcl`` command.

Every case asserts the same three things (:func:`tests.faults.checks.expect`): the exit status,
one line naming the option or file at fault (no traceback), and a folder left as it was apart
from what the command should write (no ``*.tmp`` file either).
"""
