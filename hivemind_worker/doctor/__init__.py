"""`hivemind-worker doctor`: checks of this host, one line each (PASS/WARN/FAIL) with
the fix for failures. Read-only: the doctor never changes the host."""

from hivemind_worker.doctor.model import CheckResult, DoctorContext, Outcome  # noqa: F401
from hivemind_worker.doctor.runner import CHECKS, run_doctor  # noqa: F401

__all__ = ["CHECKS", "CheckResult", "DoctorContext", "Outcome", "run_doctor"]
