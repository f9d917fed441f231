"""What a process killed with SIGKILL loses of its usage-ledger counts: a child records a few
hundred requests a second through ``UsageDatabase``; the parent kills it at a random moment and
finds the last recorded request that reached the database. Prints the seconds lost per kill.

    .venv/bin/python scripts/measure_ledger_loss.py
"""

import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serve.usage.database import open_engine  # noqa: E402
from serve.usage.reports import UsageQuery, usage_rows  # noqa: E402

CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
from serve.usage.database import UsageDatabase
from serve.usage.ledger import Answered
db = UsageDatabase(sys.argv[1])
n = 0
while True:
    db.record(Answered("k", "m", "/v1/chat/completions", 200, 1, 1, 0.0, time.time()))
    n += 1
    if n % 5 == 0:
        print(n, time.time(), flush=True)
    time.sleep(0.002)
"""
losses = []
for run in range(8):
    d = tempfile.mkdtemp()
    url = f"sqlite:///{d}/u.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(ROOT)], stdout=subprocess.PIPE, text=True
    )
    time.sleep(2 + random.random() * 2)
    child.send_signal(signal.SIGKILL)
    lines = [line.split() for line in child.communicate()[0].splitlines()]
    recorded, last_at = int(lines[-1][0]), float(lines[-1][1])
    rows = usage_rows(open_engine(url), UsageQuery(group_by=("key",)))
    written = rows[0]["requests"] if rows else 0
    # the time of the last request that made it into the ledger
    written_at = next(float(t) for n, t in lines if int(n) >= written)
    losses.append(last_at - written_at)
    lost_s = last_at - written_at
    print(f"run {run}: recorded {recorded}, in the ledger {written}: lost the last {lost_s:.2f} s")
print(f"max lost {max(losses):.2f} s over {len(losses)} kills")
