"""What every absl binary of keras-sr does the same way (absl only: both sides use it)."""
import errno
import os
import sys

from absl import app, flags

from keras_sr.common import bad_images, lock

# Errors of the machine rather than of the program (a full disk, a read-only or foreign folder):
# one line naming the file says all there is to say, a traceback would bury it.
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def resolved_flags(module_name):
    """The flags a binary defines, with the values this run resolved (defaults included).

    Args:
        module_name: the binary's `__name__` ("__main__" when run as a script).

    Returns:
        dict flag name -> value, JSON-serializable; each binary stores it with what it writes.
    """
    return {flag.name: flag.value for flag in flags.FLAGS.get_key_flags_for_module(module_name)}


def define_shape(name, default, help_text, module_name):
    """Defines a list flag holding an NHWC shape with 3 channels, e.g. --input_shape=1,360,640,3.

    Args:
        name: the flag's name.
        default: the default shape, a tuple of four ints.
        help_text: the flag's help.
        module_name: the binary's `__name__`, so the flag counts as the binary's own (absl
            would attribute it to this module) and `resolved_flags` records it.

    Returns:
        A function that returns the flag's value as a tuple of ints (after flags are parsed).
    """
    if module_name == "__main__":
        module_name = sys.argv[0]  # how absl names the flags of a script's own module
    holder = flags.DEFINE_list(name, [str(v) for v in default], help_text,
                              module_name=module_name)
    flags.register_validator(
        name, lambda s: len(s) == 4 and all(v.isdigit() and int(v) > 0 for v in s) and s[3] == "3",
        message=f"--{name} must be four positive integers N,H,W,3")
    return lambda: tuple(int(v) for v in holder.value)


def define_deterministic(module_name):
    """Defines --deterministic for a training binary, which then calls
    `tf.config.experimental.enable_op_determinism()` before its first op when it is set (this
    module stays free of TensorFlow).

    Args:
        module_name: the binary's `__name__` (see `define_shape`).

    Returns:
        The flag's holder.
    """
    if module_name == "__main__":
        module_name = sys.argv[0]
    return flags.DEFINE_boolean(
        "deterministic", False, "Run every op deterministically (tf.config.experimental."
        "enable_op_determinism; slower, mostly on GPUs): with the same --seed, two runs, or a "
        "killed run and its rerun, end with identical weights.", module_name=module_name)


def run_main(main):
    """`app.run(main)`, where a bad command line prints one line and exits with status 2.

    absl prints the whole usage text and exits with status 1 both for flag errors (`flags.Error`,
    e.g. a missing required flag) and for `app.UsageError` raised by `main`. Status 2 is the usual
    one for a bad command line (argparse, GNU tools), so that callers can tell it from a run that
    failed (status 1). The line reads "PROGRAM: error: MESSAGE" on stderr, without a traceback.
    A work directory in use by another process (`lock.LockHeld`) is refused the same way (status
    2: nothing was done). A full disk, a read-only folder or a missing permission (`OSError` with
    one of `_ENVIRONMENT_ERRNOS`) ends the run with one line naming the file and status 1; every
    other error keeps its traceback. An input image that ends a run under --on_bad_image=fail
    (`bad_images.BadImageError`) gets one line naming the file and the reason, and status 1.
    """
    def fail(error, status=2):
        print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr)
        sys.exit(status)

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            fail(e)

    def checked_main(argv):
        try:
            return main(argv)
        except (app.UsageError, lock.LockHeld) as e:
            fail(e)
        except bad_images.BadImageError as e:
            fail(e, status=1)
        except OSError as e:
            if e.errno not in _ENVIRONMENT_ERRNOS:
                raise
            fail(f"{e.strerror}: {e.filename}" if e.filename else e, status=1)

    app.run(checked_main, flags_parser=parse)
