"""One progress view for the whole job: stage i of n, its step and rate, and the job's ETA.

On a terminal it is one updating tqdm line; otherwise (a log file, CI) it writes a plain log line
every `log_seconds`, so logs stay readable.
"""
import sys
import time

from absl import logging
from tqdm import tqdm

from keras_sr.common import progress


class JobProgress:
    """Tracks the job's stages against its plan.

    Args:
        stages: names of every part of the job, in order (e.g. "data", "stage1", ..., "report").
        deadline: time.time() at which the job's budget ends (None: no budget; the ETA then comes
            from the current stage's rate only).
        stream: where the terminal line goes (default stderr); a non-terminal stream gets log lines.
        log_seconds: period of the plain log lines.
    """

    def __init__(self, stages, deadline=None, stream=None, log_seconds=15.0):
        self.stages, self.deadline = list(stages), deadline
        self.stream = stream or sys.stderr
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log_seconds = log_seconds
        self.bar = None
        self.stage = None
        self._last_log = 0.0
        self._stage_start = self._rate_start = time.time()
        self._rate_step = 0

    def start(self, stage, total=None):
        """Begins `stage` (one of `stages`); `total` is its step count when it has steps."""
        self.stage = stage
        self._stage_start = self._rate_start = time.time()
        self._rate_step = 0
        label = f"[{self.stages.index(stage) + 1}/{len(self.stages)}] {stage}"
        if self.interactive:
            if self.bar is None:
                self.bar = tqdm(total=total, file=self.stream, dynamic_ncols=True, unit="step")
            self.bar.reset(total=total)
            self.bar.set_description(label)
            self.bar.set_postfix_str(self._eta_text(None))
        logging.info("Job %s started%s; %s", label, f" ({total} steps)" if total else "",
                     self._eta_text(None))

    def update(self, step, total):
        """The current stage has done `step` of `total` steps."""
        now = time.time()
        rate = (step - self._rate_step) / max(now - self._rate_start, 1e-9)
        if self.interactive:
            if self.bar.total != total:
                self.bar.total = total
            self.bar.n = step
            self.bar.set_postfix_str(self._eta_text((total - step) / rate if rate > 0 else None),
                                     refresh=False)
            self.bar.refresh()
        elif now - self._last_log >= self.log_seconds or step == total:
            self._last_log = now
            logging.info("Job [%d/%d] %s: step %d/%d, %.2f steps/s, %s",
                         self.stages.index(self.stage) + 1, len(self.stages), self.stage, step,
                         total, rate, self._eta_text((total - step) / rate if rate > 0 else None))

    def done(self, stage, seconds):
        logging.info("Job stage %s done in %s.", stage, progress.format_duration(seconds))

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _eta_text(self, stage_remaining):
        if self.deadline is not None:
            return f"job ETA {progress.format_duration(max(0.0, self.deadline - time.time()))}"
        if stage_remaining is None:
            return "job ETA ?"
        return f"stage ETA {progress.format_duration(stage_remaining)}"
