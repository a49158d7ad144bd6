"""What every absl binary of keras-sr does the same way (absl only: both sides use it)."""
import sys

from absl import flags


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
