"""The absl binaries of keras-sr, installed as the package `keras_sr_tools` (see setup.py).

Each binary parses and validates its flags, records them (`keras_sr.common.cli.resolved_flags`)
and calls one tested library function; `python tools/NAME.py` runs one from a checkout.
"""
