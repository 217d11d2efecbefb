"""This process's resident memory, from /proc (Linux): what the trainer reports in summary.json and what the
planner's measurement compares with its plan."""

from __future__ import annotations

from ds_kronos.errors import UserError

STATUS = "/proc/self/status"


def _status_kib(field: str) -> int:
    with open(STATUS, encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise UserError(f"{STATUS} has no {field} (Linux only)")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024
