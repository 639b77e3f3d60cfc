"""The writer command meets an invariant violation: it exits 1 naming the batch, with one
line on stderr and no traceback (tests/integration/test_invariant_violation.py shows the
rollback and the breaker forced open)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT
from workers import cli

STOP_S = 30


# The writer command with a Writer whose run meets a violation, in a process of its own:
# the command configures logging, signals and the GC for the whole process.
VIOLATED_WRITER = """
import sys
from producer.errors import InvariantViolation
from workers import cli
from workers.writer.batch_writer import Writer

def violated(self, stop):
    raise InvariantViolation("batch 7 rolled back: txn 0b6c2d1e does not sum to zero")

Writer.run = violated
sys.exit(cli.main(["writer"]))
"""


def test_the_writer_command_exits_1_naming_the_batch(env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-c", VIOLATED_WRITER], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=STOP_S,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == cli.EXIT_FAILED, done.stderr
    assert "batch 7 rolled back" in done.stderr and "Traceback" not in done.stderr
