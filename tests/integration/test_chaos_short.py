"""The chaos suite's short variant (issue 11, item 2): two faults on a private stack under load.

`make chaos` runs six faults with long recovery windows, by hand (docs/reliability.md). This
variant keeps the rules that must hold on any machine, however busy: no call hangs, no call
ends far past its deadline, and while the moderation replica is dead no stream text reaches a
caller. The late bound is 500 ms here, not the suite's 50 ms: on a loaded 2-core CI machine
the load generator's own event loop notices a deadline late.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest import chaos

pytestmark = pytest.mark.integration


def test_a_frozen_and_a_killed_replica_leave_no_hung_call_and_no_unchecked_text(tmp_path: Path) -> None:
    report = tmp_path / "chaos.md"
    code = chaos.main([
        "--faults", "freeze,moderation-kill", "--users", "2", "--deadline", "30", "--warmup", "5",
        "--freeze-s", "5", "--recover-window", "20", "--late-limit-ms", "500", "--report", str(report),
    ])
    text = report.read_text()
    assert code == 0, text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert {"freeze", "moderation-kill"} <= set(rows), text
    for fault in ("freeze", "moderation-kill"):
        assert rows[fault].split("|")[3].strip() == "0", rows[fault]  # none hung
    assert rows["moderation-kill"].split("|")[6].strip() == "0", rows["moderation-kill"]  # unchecked chars
