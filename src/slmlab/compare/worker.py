"""``python -m slmlab.compare.worker TASK_JSON``: run one (cell, seed) of a series in this process."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from slmlab.compare.series import RunTask, run_task


class ParentWatch(threading.Thread):
    """Ends this worker when the series process that started it is gone (killed): no orphan keeps
    training a run that a resumed series would start again."""

    def __init__(self):
        super().__init__(daemon=True)
        self.parent = os.getppid()

    def run(self) -> None:
        while os.getppid() == self.parent:
            time.sleep(0.5)
        os._exit(3)


def main(argv: list[str]) -> int:
    ParentWatch().start()
    task = RunTask(**json.loads(argv[1]))
    record = run_task(task)
    return 0 if record["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
