"""The TFRecord contract between teacher_bridge (torch) and keras_sr (TensorFlow).

Standard library only: the teacher job runs where TensorFlow is absent, and keras_sr reads the same files
with `tf.data.TFRecordDataset` + `tf.io.parse_single_example`. Records are serialized `tf.train.Example`
protos in the TFRecord framing (length, masked CRC-32C, payload, masked CRC-32C); both are encoded here by
hand so that no protobuf or TensorFlow import is needed.

Two record kinds share the key `image_id` (UTF-8 bytes), which joins them:

* SR records (`SR_FEATURES`), written by `keras_sr.data` / `tools/prepare_data.py`: one image pair per
  record; `hr_png` and `lr_png` are 8-bit RGB PNGs, LR = HR (cropped to a multiple of `scale`) downscaled
  by `scale` with the MATLAB bicubic rule or taken from an official LR file.
* Teacher records (`TEACHER_FEATURES`), written by `tools/precompute_teacher.py`: `teacher_png` is the
  teacher's x`scale` output for the LR image of the same `image_id`, clamped to [0, 1] and rounded to
  uint8 (8-bit RGB PNG of size `height` x `width` = scale * LR size), plus the provenance of that output.
"""
import os
import struct

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

    Returns:
        The number of records written.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    count = 0
    try:
        with open(tmp, "wb") as f:
            for record in serialized_records:
                length = struct.pack("<Q", len(record))
                f.write(length + struct.pack("<I", masked_crc32c(length)))
                f.write(record + struct.pack("<I", masked_crc32c(record)))
                count += 1
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return count


def read_tfrecord(path, verify=True):
    """Yields the serialized records of a TFRecord file, checking the CRCs unless `verify` is False."""
    with open(path, "rb") as f:
        index = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise RecordError(f"{path}: truncated header of record {index}")
            length, length_crc = struct.unpack("<QI", header)
            if verify and masked_crc32c(header[:8]) != length_crc:
                raise RecordError(f"{path}: corrupt length of record {index}")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise RecordError(f"{path}: truncated record {index}")
            if verify and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise RecordError(f"{path}: corrupt data in record {index}")
            yield data
            index += 1
