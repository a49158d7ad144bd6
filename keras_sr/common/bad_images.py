"""What every job does with an input image it cannot use: the `--on_bad_image` policy.

One policy for data preparation, evaluation, teacher precomputation and the upscaler:

* "skip" (the default): the file is left out, a warning names it and the reason, and it is listed
  in the job's summary JSON as {"num_skipped": n, "skipped": [{"item": FILE, "reason": ...}]};
* "fail": the first bad file ends the run with `BadImageError`, one line "FILE: reason" (the
  binaries print it as "PROG: error: FILE: reason" and exit with status 1: the command line was
  fine, the run failed on its data).

Files that are not images at all (a README.txt beside the photos, a subfolder) are listed as
skipped under both policies but never end a run (`BadImages.add(..., fatal=False)`).

Conversions that keep an image usable (16-bit to 8-bit, grayscale to RGB, EXIF orientation, ...)
are not failures: `BadImages.note` logs each at info and counts them by kind for the summary.

Framework-free (standard library only), so `teacher_bridge` uses it too.
"""
import collections
import logging

POLICIES = ("skip", "fail")
DEFAULT_POLICY = "skip"
FLAG_HELP = ("What to do with an input image that cannot be used (empty, truncated, corrupt, not "
             "an image, unreadable): skip it (listed with the reason in the summary JSON) or "
             "fail (the first one ends the run, exit status 1).")


class BadImageError(ValueError):
    """An input image cannot be used and the policy is "fail"; the message names the file."""


class NoImagesError(ValueError):
    """A folder or source holds nothing to work on; the message names it."""


def line(item, reason):
    """"ITEM: reason", without repeating ITEM when the reason already starts with it."""
    item = str(item)
    return reason if reason.startswith(item) else f"{item}: {reason}"


class BadImages:
    """Collects the bad inputs of one job under a policy, and the conversions of the good ones.

    Args:
        policy: "skip" or "fail" (see the module docstring).

    Attributes:
        skipped: [{"item": str, "reason": str}, ...] in the order found, one entry per item.
        conversions: collections.Counter, conversion note -> number of images.
    """

    def __init__(self, policy=DEFAULT_POLICY):
        if policy not in POLICIES:
            raise ValueError(f"on_bad_image must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        self.skipped = []
        self.conversions = collections.Counter()
        self._seen = set()

    def add(self, item, reason, fatal=True, log=True):
        """Records a bad input: raises `BadImageError` under "fail" (if `fatal`), else warns.

        An item already recorded is not recorded again (a job may read a file twice). `log`
        False: entries gathered again from a record of what another process found and logged.
        """
        item = str(item)
        if fatal and self.policy == "fail":
            raise BadImageError(line(item, reason))
        if item in self._seen:
            return
        self._seen.add(item)
        self.skipped.append({"item": item, "reason": reason})
        if log:
            logging.warning("skipped %s", line(item, reason))

    def extend(self, skipped, fatal=True, log=True):
        """Records entries in the JSON form ({"item", "reason"} dicts), e.g. of a shard summary."""
        for entry in skipped:
            self.add(entry["item"], entry["reason"], fatal, log)

    def note(self, item, notes):
        """Counts and logs (info) the conversion notes of one usable image."""
        for note in notes:
            self.conversions[note] += 1
            logging.info("%s: %s", item, note)

    def to_json(self):
        """{"num_skipped": n, "skipped": [...]} (the keys of every job's summary JSON)."""
        return {"num_skipped": len(self.skipped), "skipped": list(self.skipped)}


def count_conversions(counters):
    """Sums conversion counts ({note: n} dicts) into one dict sorted by note."""
    total = collections.Counter()
    for counter in counters:
        total.update(counter)
    return dict(sorted(total.items()))
