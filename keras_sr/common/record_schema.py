"""The TFRecord contract between teacher_bridge (torch) and keras_sr (TensorFlow).

Standard library only (plus `keras_sr.common.fileio`): the teacher job runs where TensorFlow is absent,
and keras_sr reads the same files with `tf.data.TFRecordDataset` + `tf.io.parse_single_example`.
Records are serialized `tf.train.Example` protos in the TFRecord framing (length, masked CRC-32C,
payload, masked CRC-32C); both are encoded here by hand so that no protobuf or TensorFlow import is
needed.

Two record kinds share the key `image_id` (UTF-8 bytes), which joins them:

* SR records (`SR_FEATURES`), written by `keras_sr.data` / `tools/prepare_data.py`: one image pair per
  record; `hr_png` and `lr_png` are 8-bit RGB PNGs, LR = HR (cropped to a multiple of `scale`) downscaled
  by `scale` with the MATLAB bicubic rule or taken from an official LR file.
* Teacher records (`TEACHER_FEATURES`), written by `tools/precompute_teacher.py`: `teacher_png` is the
  teacher's x`scale` output for the LR image of the same `image_id`, clamped to [0, 1] and rounded to
  uint8 (8-bit RGB PNG of size `height` x `width` = scale * LR size), plus the provenance of that output.

Both jobs write sharded outputs the same way: a shard "<name>.tfrecord" is finished once its summary
"<name>.json" exists (written after the records, both atomically) and holds the job's settings under
"settings"; a rerun with the same settings skips finished shards (`finished_shard`).
"""
import glob
import os
import struct

from keras_sr.common import fileio

BYTES, INT64, FLOAT = "bytes", "int64", "float"

# key -> (kind, meaning). Every key is required and holds exactly one value.
SR_FEATURES = {
    "image_id": (BYTES, "unique id of the image within its source (UTF-8), e.g. 'T91/t1'"),
    "hr_png": (BYTES, "high-resolution image, 8-bit RGB PNG, cropped to a multiple of scale"),
    "lr_png": (BYTES, "low-resolution image, 8-bit RGB PNG, HR size / scale"),
    "scale": (INT64, "upscaling factor"),
}
TEACHER_FEATURES = {
    "image_id": (BYTES, "id of the SR record whose LR image the teacher upscaled"),
    "teacher_png": (BYTES, "teacher output, clamp [0,1] then round(255 x), 8-bit RGB PNG"),
    "height": (INT64, "teacher output height = scale * LR height"),
    "width": (INT64, "teacher output width = scale * LR width"),
    "scale": (INT64, "upscaling factor"),
    "checkpoint_sha256": (BYTES, "sha256 of the teacher checkpoint file (hex)"),
    "routing": (BYTES, "token routing mode of the teacher: 'gumbel' or 'argmax'"),
    "seed": (INT64, "RNG seed used for this image's gumbel routing"),
    "tiling": (BYTES, "the tiling rule the image was run with, in words"),
}


class RecordError(ValueError):
    """A record or file does not follow the contract."""


# --- CRC-32C (Castagnoli), as TFRecord framing requires. ------------------------------------------------
def _make_crc_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _make_crc_table()


def crc32c(data):
    """CRC-32C of `data` (bytes)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --- Minimal protobuf wire format for tf.train.Example. ----------------------------------------------
def _varint(value):
    out = bytearray()
    value &= (1 << 64) - 1  # int64 values are encoded as their two's complement
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number, payload):
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _read_varint(buf, pos):
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise RecordError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf):
    """Yields (field number, wire type, value) of a serialized message."""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        else:
            raise RecordError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _encode_feature(kind, value):
    if kind == BYTES:
        if isinstance(value, str):
            value = value.encode("utf-8")
        return _field(1, _field(1, bytes(value)))  # Feature.bytes_list.value
    if kind == INT64:
        return _field(3, _field(1, _varint(int(value))))  # Feature.int64_list (packed)
    if kind == FLOAT:
        return _field(2, _field(1, struct.pack("<f", float(value))))  # Feature.float_list (packed)
    raise RecordError(f"unknown feature kind {kind!r}")


def encode_example(features, schema):
    """Serializes one record as a `tf.train.Example`.

    Args:
        features: dict key -> value (bytes or str for BYTES, int for INT64, float for FLOAT).
        schema: SR_FEATURES or TEACHER_FEATURES; the keys must match it exactly.

    Returns:
        The serialized Example (bytes).
    """
    missing = sorted(set(schema) - set(features))
    extra = sorted(set(features) - set(schema))
    if missing or extra:
        raise RecordError(f"record keys do not match the schema: missing {missing}, unexpected {extra}")
    entries = b""
    for key in sorted(schema):
        entry = _field(1, key.encode("utf-8")) + _field(2, _encode_feature(schema[key][0], features[key]))
        entries += _field(1, entry)  # Features.feature map entry
    return _field(1, entries)  # Example.features


def _decode_values(feature):
    """Returns the list of values of a serialized Feature."""
    for kind_number, _, payload in _fields(feature):
        values = []
        for _, wire, value in _fields(payload):
            if kind_number == 1:
                values.append(bytes(value))
            elif kind_number == 3:
                if wire == 0:
                    values.append(value)
                else:  # packed
                    pos = 0
                    while pos < len(value):
                        v, pos = _read_varint(value, pos)
                        values.append(v)
                values = [v - (1 << 64) if v >= 1 << 63 else v for v in values]
            elif kind_number == 2:
                values.extend(struct.unpack(f"<{len(value) // 4}f", value))
        return values
    return []


def decode_example(serialized, schema):
    """Parses a serialized `tf.train.Example` into a dict key -> single value, checked against `schema`."""
    parsed = {}
    for _, _, features in _fields(serialized):
        for _, _, entry in _fields(features):
            key, feature = None, b""
            for number, _, value in _fields(entry):
                if number == 1:
                    key = bytes(value).decode("utf-8")
                elif number == 2:
                    feature = value
            parsed[key] = _decode_values(feature)
    missing = sorted(set(schema) - set(parsed))
    if missing:
        raise RecordError(f"record lacks keys {missing} (has {sorted(parsed)})")
    out = {}
    for key, (kind, _) in schema.items():
        if len(parsed[key]) != 1:
            raise RecordError(f"key {key!r} holds {len(parsed[key])} values, expected 1")
        out[key] = parsed[key][0]
    return out


# --- TFRecord files. ------------------------------------------------------------------------------
def write_tfrecord(path, serialized_records):
    """Writes serialized records to `path` atomically: readers never see a partial file.

    The file is written through `fileio.atomic_open`, so an exception raised while writing (by the
    `serialized_records` iterator, say) leaves `path` as it was and no temporary file behind.

    Args:
        path: the TFRecord file.
        serialized_records: iterable of bytes (e.g. from `encode_example`), consumed while writing.

    Returns:
        The number of records written.
    """
    count = 0
    with fileio.atomic_open(path) as f:
        for record in serialized_records:
            length = struct.pack("<Q", len(record))
            f.write(length + struct.pack("<I", masked_crc32c(length)))
            f.write(record + struct.pack("<I", masked_crc32c(record)))
            count += 1
    return count


def read_tfrecord(path, verify=True):
    """Yields the serialized records of a TFRecord file.

    The CRC of each length field is always checked (8 bytes: cheap, and a corrupt length would
    send the reader off the end of the file); the CRC of each record's data, which costs about
    90 ms per MB in pure Python, unless `verify` is False.

    Raises:
        RecordError: "PATH: ... record N (0-based) ..." for a truncated file or a CRC mismatch.
    """
    with open(path, "rb") as f:
        index = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise RecordError(f"{path}: truncated header of record {index} (0-based)")
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                raise RecordError(f"{path}: corrupt length of record {index} (0-based; bad CRC)")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise RecordError(f"{path}: truncated record {index} (0-based)")
            if verify and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise RecordError(f"{path}: corrupt data in record {index} (0-based; bad CRC)")
            yield data
            index += 1


def check_record_flags(named):
    """Checks record flags before a job writes anything.

    Args:
        named: [(flag, records), ...]; records None or empty are not given and pass.

    Raises:
        ValueError: "FLAG: no TFRecord files found for ..." for the first that matches no file.
    """
    for flag, records in named:
        if records:
            try:
                list_record_files(records)
            except FileNotFoundError as e:
                raise ValueError(f"{flag}: {e}") from None


def list_record_files(records):
    """Expands record paths into a list of files.

    Args:
        records: a path or a list of paths; each is a TFRecord file, a folder (all *.tfrecord
            inside) or a glob pattern.

    Returns:
        [str, ...]: the files of each path, sorted, in the order of the paths.

    Raises:
        FileNotFoundError: a path that matches no file.
    """
    files = []
    for spec in [records] if isinstance(records, (str, os.PathLike)) else records:
        spec = os.fspath(spec)
        if os.path.isdir(spec):
            found = sorted(glob.glob(os.path.join(spec, "*.tfrecord")))
        elif os.path.isfile(spec):
            found = [spec]
        else:
            found = sorted(glob.glob(spec))
        if not found:
            raise FileNotFoundError(f"no TFRecord files found for {spec!r}")
        files.extend(found)
    return files


# --- Sharded outputs. -----------------------------------------------------------------------------
def shard_json_path(path):
    """The summary file of the shard `path`: "<name>.tfrecord" -> "<name>.json"."""
    return os.path.splitext(os.fspath(path))[0] + ".json"


def finished_shard(path, settings):
    """The summary of shard `path` if it was finished with `settings`, else None.

    Args:
        path: the shard's TFRecord file.
        settings: JSON-like dict of the job settings; compared with the summary's "settings" entry.

    Returns:
        The shard's summary dict (from `shard_json_path(path)`), or None when the shard or its
        summary is missing or the summary was written with other settings: the shard must be
        (re)written.

    Raises:
        ValueError: the summary file is not valid JSON.
    """
    summary_path = shard_json_path(path)
    if not (os.path.isfile(path) and os.path.isfile(summary_path)):
        return None
    summary = fileio.read_json(summary_path)
    return summary if isinstance(summary, dict) and summary.get("settings") == settings else None
