"""The runbook checks, as data: ``status`` points at the matching one with the exact next command.

The titles are the headings of docs/runbook.md (a test keeps the two in step).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

RUNBOOK_PATH = "docs/runbook.md"


@dataclass(frozen=True, slots=True)
class Check:
    number: int
    title: str

    @property
    def anchor(self) -> str:
        slug = "".join(c if c.isalnum() or c == " " else "" for c in self.title.lower()).strip().replace(" ", "-")
        return f"{self.number}-{slug}"

    @property
    def reference(self) -> str:
        return f"{RUNBOOK_PATH}#{self.anchor}"


PUSH_NOT_SENT = Check(1, "Push not sent")
CRM_REJECTS = Check(2, "CRM rejects the payload")
LITERAL_PLACEHOLDER = Check(3, "Literal placeholder reached the CRM")
STRING_NOT_OBJECT = Check(4, "Field sent as a string instead of an object")
RECORDING_LINK = Check(5, "Recording link broken")
CRM_DOWN = Check(6, "A CRM is down")  # attempts scheduled on the retry ladder, or the ladder exhausted
SIGNATURE_INVALID = Check(7, "The CRM says the signature is invalid")
CREDENTIALS_REVOKED = Check(8, "The CRM's credentials were revoked")  # an OAuth token endpoint refused for good
QUOTA_SPENT = Check(9, "A CRM's quota is spent")  # error_kind quota: calls parked until the reset (contract §14)

CHECKS = (
    PUSH_NOT_SENT,
    CRM_REJECTS,
    LITERAL_PLACEHOLDER,
    STRING_NOT_OBJECT,
    RECORDING_LINK,
    CRM_DOWN,
    SIGNATURE_INVALID,
    CREDENTIALS_REVOKED,
    QUOTA_SPENT,
)


def command(*words: str) -> str:
    """A command line an operator can paste: every argument quoted as the shell needs."""
    return shlex.join(["post-call-push", *words])
