"""A resumable job's state file: the settings it runs with, and every part done with its result.

    WORKDIR/<file>   {"settings": ..., "done": {part name: {"seconds", "result"}}}

A part (a data step, a training stage, an export, a scored model) is recorded once it has
finished, so a rerun skips it and returns its recorded result; a part that raised is not recorded
and runs again on the next run (a training stage then resumes from its checkpoints). A rerun with
other settings in the same folder is refused, naming what differs. `keras-sr-run` (job.json) and
`keras-sr-ablate` (ablation.json) keep their state this way.
"""
import json
import os
import time

from absl import logging

from keras_sr.common import fileio


class SettingsMismatch(ValueError):
    """The work directory was started with other settings (the message lists them)."""


def _json_form(value):
    # Settings and results are compared and returned as stored: tuples become lists, keys strings.
    return json.loads(json.dumps(value, sort_keys=True, default=str))


class Ledger:
    """The parts done in one work directory.

    Args:
        workdir: the folder (created if needed).
        settings: JSON-serializable settings of this run; a folder started with others is refused.
        filename: the state file inside `workdir`.
        what: what the folder holds, for messages ("job", "ablation").

    Raises:
        SettingsMismatch: the state file holds other settings.
    """

    def __init__(self, workdir, settings, filename, what):
        self.path, self.what = os.path.join(workdir, filename), what
        settings = _json_form(settings)
        if os.path.isfile(self.path):
            self.state = fileio.read_json(self.path)
            stored = self.state["settings"]
            differ = sorted(k for k in set(settings) | set(stored)
                            if settings.get(k) != stored.get(k))
            if differ:
                changes = "; ".join(f"{k}: {stored.get(k)!r} -> {settings.get(k)!r}"
                                    for k in differ)
                raise SettingsMismatch(f"{workdir} holds {what} with other settings ({changes}); "
                                       "rerun with the same flags to resume it, or use another "
                                       "--workdir")
        else:
            os.makedirs(workdir, exist_ok=True)
            self.state = {"settings": settings, "done": {}}
            fileio.write_json(self.path, self.state)

    def done(self, name):
        """Whether part `name` has finished."""
        return name in self.state["done"]

    def part(self, name, fn):
        """Runs `fn()` as part `name` unless it is done; returns its (recorded) result.

        The result must be JSON-serializable; it is recorded (atomically) before it is returned.
        """
        if self.done(name):
            logging.info("%s: %s already done, skipped.", self.what, name)
            return self.state["done"][name]["result"]
        start = time.time()
        result = _json_form(fn())
        self.state["done"][name] = {"seconds": round(time.time() - start, 2), "result": result}
        fileio.write_json(self.path, self.state)
        return result
