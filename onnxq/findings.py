"""One problem found by a check (the TensorRT lint, the scale-file check): severity, rule id, subject, message."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    rule: str
    subject: str  # the node or tensor the finding is about
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.severity}: [{self.rule}] {self.subject}: {self.message}"


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


def findings_payload(findings: list[Finding]) -> dict:
    """The findings as a JSON-ready dict: counts and every finding."""
    errors = sum(f.severity == "error" for f in findings)
    return {"errors": errors, "warnings": len(findings) - errors, "findings": [f.to_dict() for f in findings]}
