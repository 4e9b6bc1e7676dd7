"""A stand-in prediction process for tests/prediction/test_claims.py: six cases through run_cases, each
logged and written atomically after a delay (no model, so it starts in well under a second)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from medseg.atomic import atomic_path
from medseg.errors import DataError
from medseg.prediction.cases import Case, run_cases
from medseg.prediction.claims import Sharing


def main() -> None:
    opts = json.loads(sys.argv[1])
    out, log = Path(opts["out"]), Path(opts["log"])
    go = opts.get("go")
    while go and not Path(go).exists():  # start together with the other process
        time.sleep(0.01)
    cases = [Case(f"case{i}", Path(f"in{i}")) for i in range(opts.get("n", 6))]

    def run(case: Case, todo: set[Path]) -> list[Path]:  # todo: the outputs missing (here the one .txt)
        with open(log, "a") as fh:
            fh.write(f"{case.name} {os.getpid()}\n")
        if case.name in opts.get("fail", []):
            raise DataError(f"{case.source}: broken on purpose")
        target = out / f"{case.name}.txt"
        with atomic_path(target) as tmp:
            tmp.write_text(f"{case.name}\n")
            time.sleep(opts.get("delay", 0.0))
        return [target]

    sharing = Sharing(opts.get("timeout", 600.0), tuple(opts["shard"]) if opts.get("shard") else None,
                      opts.get("run_id"))
    report = run_cases(cases, lambda c: out / f"{c.name}.txt", run, overwrite=opts.get("overwrite", False),
                       progress=False, sharing=sharing)
    print(json.dumps({"predicted": report.predicted, "skipped": [p.name for p in report.skipped],
                      "elsewhere": report.elsewhere, "failed": [f[0] for f in report.failed]}))


if __name__ == "__main__":
    main()
