"""Loads official MambaIRv2-Light checkpoints (csguoh/MambaIR, BasicSR format) into our model.

BasicSR saves `{'params': state_dict}` (plus `'params_ema'` when EMA is on); other tools save a bare
state dict, sometimes from a DataParallel model whose keys start with `module.`. `read_state_dict`
accepts all three, and `load_teacher` loads strictly: any missing, unexpected or mis-shaped key is
reported in one error that names the file.

A checkpoint is data, never code: it is read once into memory, hashed (the sha256 of exactly the
bytes loaded is recorded, and checked against an expected one when given), and unpickled only by
`torch.load(weights_only=True)`, which builds tensors and plain containers and refuses every other
object a pickle names (a class, a function: what a malicious file would run).
"""
import hashlib
import io
import os
import pickle

import torch

from teacher_bridge.model import (CONFIGS, DEFAULT_CONFIG, DEFAULT_SEED, MambaIRv2Light,
                                  relative_position_index)

_CONTAINER_KEYS = ("params", "params_ema")
_MAX_LISTED = 20  # keys listed per category in an error message


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or does not fit the model."""


def _read_checked(path, expected_sha256):
    """The bytes of `path` and their hex sha256, checked against `expected_sha256` if given."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"teacher checkpoint {path!r} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    sha256 = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256.strip().lower():
        raise CheckpointError(f"teacher checkpoint {path!r} has sha256 {sha256}, not the expected "
                              f"{expected_sha256.strip().lower()}: another or a damaged file")
    return data, sha256


def read_state_dict(path, expected_sha256=None):
    """Reads a checkpoint's state dict with `torch.load(weights_only=True)` onto the CPU.

    Args:
        path: a `.pth` file: `{'params': sd}`, `{'params_ema': sd}` (used when 'params' is absent)
            or a bare state dict; a leading `module.` is stripped from every key.
        expected_sha256: hex sha256 the file must have (e.g. the one a release publishes), or
            None.

    Returns:
        (state_dict, where, sha256): where is one of "params", "params_ema", "bare"; sha256 is
        the hex digest of the bytes that were loaded.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: another sha256 than the expected one, a file that carries pickled
            objects other than tensors and containers (refused, never run), or one that is not a
            state dict.
    """
    path = os.fspath(path)
    data, sha256 = _read_checked(path, expected_sha256)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only met a global it does not allow
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"teacher checkpoint {path!r} refused: it carries pickled Python objects beyond "
            "tensors (code that loading would run), and checkpoints are only read with "
            "torch.load(weights_only=True); save the state dict alone "
            f"(torch.save(model.state_dict(), path)). torch: {reason}") from None
    except Exception as e:  # torch raises several types for damaged files (zip, EOF, ...)
        raise CheckpointError(
            f"teacher checkpoint {path!r} cannot be loaded with torch.load(weights_only=True): {e}"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"teacher checkpoint {path!r} holds a {type(obj).__name__}, "
                              "not a state dict")
    where = next((key for key in _CONTAINER_KEYS if key in obj), "bare")
    state = obj if where == "bare" else obj[where]
    if not isinstance(state, dict):
        raise CheckpointError(f"teacher checkpoint {path!r}: {where!r} is not a state dict")
    not_tensors = sorted(str(k) for k, v in state.items() if not torch.is_tensor(v))
    if not_tensors:
        raise CheckpointError(f"teacher checkpoint {path!r} ({where}): entries that are not "
                              f"tensors: {_listing(not_tensors)}")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return state, where, sha256


def _listing(keys):
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


def check_state_dict(model, state, path):
    """Raises CheckpointError naming `path` unless `state` has exactly the model's keys/shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"teacher checkpoint {os.fspath(path)!r} does not match MambaIRv2Light"
             f"({model.config_name!r}): {len(state)} keys in the file, {len(expected)} expected"]
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("shape mismatches", mismatched)):
        if keys:
            lines.append(f"  {title} ({len(keys)}): {_listing(keys)}")
    up = state.get("upsample.0.weight")
    if up is not None and up.ndim == 4:
        for name, cfg in CONFIGS.items():
            if (name != model.config_name and cfg.embed_dim == up.shape[1]
                    and 3 * cfg.upscale ** 2 == up.shape[0]):
                lines.append(f"  hint: the upsampler fits config={name!r} (x{cfg.upscale})")
    raise CheckpointError("\n".join(lines))


def load_teacher(checkpoint_path, routing="gumbel", device="cpu", seed=DEFAULT_SEED,
                 config=DEFAULT_CONFIG, stable_sort=True, expected_sha256=None):
    """Builds MambaIRv2-Light, loads an official checkpoint strictly, and returns it in eval mode.

    Args:
        checkpoint_path: e.g. `mambairv2_lightSR_x3.pth` from the csguoh/MambaIR v1.0 release.
        routing: "gumbel" (official: Gumbel noise at inference; seeded per image by
            `teacher_bridge.inference`) or "argmax" (deterministic).
        device: torch device for the model, e.g. "cpu" or "cuda".
        seed: per-image Gumbel seed that `teacher_bridge.inference` uses; recorded as `model.seed`.
        config: key of `teacher_bridge.model.CONFIGS` ("light_x2", "light_x3", "light_x4").
        stable_sort: stable token sort (device-independent); False reproduces official CPU runs.
        expected_sha256: the hex sha256 the checkpoint must have, or None (`read_state_dict`).

    Returns:
        `MambaIRv2Light` in eval mode without gradients; `model.checkpoint_path`,
        `model.checkpoint_sha256` and `model.checkpoint_source` ("params", "params_ema" or "bare")
        describe the weights (the sha256 of the bytes loaded). Input (B, 3, H, W) RGB in [0, 1];
        output (B, 3, sH, sW), not clamped.

    Raises:
        FileNotFoundError, CheckpointError: the file is absent, unreadable, unsafe, not the
            expected one, or does not fit.
    """
    state, where, sha256 = read_state_dict(checkpoint_path, expected_sha256)
    model = MambaIRv2Light(config, routing=routing, stable_sort=stable_sort, seed=seed)
    check_state_dict(model, state, checkpoint_path)
    model.load_state_dict(state, strict=True)
    expected_index = relative_position_index(model.window_size)
    if not torch.equal(model.relative_position_index_SA, expected_index):
        raise CheckpointError(f"teacher checkpoint {os.fspath(checkpoint_path)!r}: "
                              "relative_position_index_SA differs from the window's index")
    model.checkpoint_path = os.fspath(checkpoint_path)
    model.checkpoint_sha256 = sha256
    model.checkpoint_source = where
    return model.eval().requires_grad_(False).to(device)
