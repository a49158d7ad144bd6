"""Round trip of the teacher/student record contract: written without TensorFlow, read with it.

Also the dependency-free helpers both sides build their outputs with: atomic writes, JSON files,
record-file listing and shard resume.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_sr.common import fileio
from keras_sr.common import record_schema as rs
from keras_sr.data import records


def _teacher_record(i):
    rng = np.random.default_rng(i)
    return {
        "image_id": f"set/img{i}",
        "teacher_png": tf.io.encode_png(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)).numpy(),
        "height": 6, "width": 9, "scale": 3,
        "checkpoint_sha256": "ab" * 32, "routing": "gumbel", "seed": -7 + i, "tiling": "none",
    }


def test_written_by_bridge_read_by_tensorflow(tmp_path):
    path = tmp_path / "teacher-00000-of-00001.tfrecord"
    written = [_teacher_record(i) for i in range(3)]
    assert rs.write_tfrecord(path, (rs.encode_example(r, rs.TEACHER_FEATURES) for r in written)) == 3

    dataset = tf.data.TFRecordDataset(str(path)).map(
        lambda s: records.parse(s, rs.TEACHER_FEATURES))
    read = list(dataset.as_numpy_iterator())
    assert len(read) == 3
    for want, got in zip(written, read):
        for key, (kind, _) in rs.TEACHER_FEATURES.items():
            value = want[key].encode() if isinstance(want[key], str) else want[key]
            assert got[key] == value, key
        np.testing.assert_array_equal(tf.io.decode_png(got["teacher_png"]).numpy(),
                                      tf.io.decode_png(want["teacher_png"]).numpy())


def test_written_by_tensorflow_read_by_bridge(tmp_path):
    path = str(tmp_path / "sr.tfrecord")
    example = tf.train.Example(features=tf.train.Features(feature={
        "image_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a"])),
        "hr_png": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\x89PNG hr"])),
        "lr_png": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\x89PNG lr"])),
        "scale": tf.train.Feature(int64_list=tf.train.Int64List(value=[3])),
    }))
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(example.SerializeToString())
    (serialized,) = list(rs.read_tfrecord(path))
    assert rs.decode_example(serialized, rs.SR_FEATURES) == {
        "image_id": b"a", "hr_png": b"\x89PNG hr", "lr_png": b"\x89PNG lr", "scale": 3}
    # Our encoder produces bytes that TensorFlow's own proto parser accepts field for field.
    ours = rs.encode_example({"image_id": "a", "hr_png": b"\x89PNG hr", "lr_png": b"\x89PNG lr",
                              "scale": 3}, rs.SR_FEATURES)
    assert tf.train.Example.FromString(ours) == example


def test_corruption_and_schema_errors_are_reported(tmp_path):
    path = tmp_path / "t.tfrecord"
    rs.write_tfrecord(path, [rs.encode_example(_teacher_record(0), rs.TEACHER_FEATURES)])
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(rs.RecordError, match="corrupt data in record 0"):
        list(rs.read_tfrecord(path))
    with pytest.raises(rs.RecordError, match="missing \\['seed'\\]"):
        bad = _teacher_record(0)
        del bad["seed"]
        rs.encode_example(bad, rs.TEACHER_FEATURES)
    with pytest.raises(rs.RecordError, match="lacks keys"):
        rs.decode_example(rs.encode_example(_teacher_record(0), rs.TEACHER_FEATURES), rs.SR_FEATURES)


# --- Atomic writes, JSON files, record listing, shard resume. -------------------------------------
def _records_then_failure(count):
    """Yields `count` teacher records, then fails as a crashing encoder would."""
    for i in range(count):
        yield rs.encode_example(_teacher_record(i), rs.TEACHER_FEATURES)
    raise RuntimeError("encoder crashed")


def test_a_failing_writer_leaves_the_previous_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "teacher-00000-of-00001.tfrecord"
    assert rs.write_tfrecord(path, [rs.encode_example(_teacher_record(7), rs.TEACHER_FEATURES)]) == 1
    good = path.read_bytes()
    with pytest.raises(RuntimeError, match="encoder crashed"):
        rs.write_tfrecord(path, _records_then_failure(2))
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == [path.name]
    with pytest.raises(RuntimeError, match="writer crashed"):
        with fileio.atomic_open(tmp_path / "new.bin") as f:
            f.write(b"partial")
            raise RuntimeError("writer crashed")
    assert os.listdir(tmp_path) == [path.name]  # no partial new.bin either

    fileio.write_json(tmp_path / "sub" / "a.json", {"b": 1, "a": [1.5, "x"]})
    assert fileio.read_json(tmp_path / "sub" / "a.json") == {"a": [1.5, "x"], "b": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "sub" / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w', got 'ab'"):
        with fileio.atomic_open(path, "ab"):
            pass


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.json does not exist"):
        fileio.read_json(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON: .*line 1 column 2"):
        fileio.read_json(tmp_path / "bad.json")


def test_finished_shard_needs_both_files_and_the_same_settings(tmp_path):
    path = tmp_path / "sr-00000-of-00002.tfrecord"
    settings = {"scale": 3, "schema": sorted(rs.SR_FEATURES)}
    summary = {"file": path.name, "examples": 1, "settings": settings}
    assert rs.shard_json_path(path) == str(tmp_path / "sr-00000-of-00002.json")
    assert rs.finished_shard(path, settings) is None
    rs.write_tfrecord(path, [rs.encode_example(_teacher_record(0), rs.TEACHER_FEATURES)])
    assert rs.finished_shard(path, settings) is None  # records written, summary not yet
    fileio.write_json(rs.shard_json_path(path), summary)
    assert rs.finished_shard(path, settings) == summary
    assert rs.finished_shard(path, {**settings, "scale": 4}) is None
    path.unlink()
    assert rs.finished_shard(path, settings) is None


def test_list_record_files_expands_files_folders_and_globs(tmp_path):
    for name in ("b.tfrecord", "a.tfrecord", "c.json"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.tfrecord").write_bytes(b"")
    folder = [str(tmp_path / "a.tfrecord"), str(tmp_path / "b.tfrecord")]
    assert rs.list_record_files(tmp_path) == folder
    assert rs.list_record_files(str(tmp_path / "*.tfrecord")) == folder
    assert rs.list_record_files([tmp_path / "sub" / "z.tfrecord", str(tmp_path)]) == (
        [str(tmp_path / "sub" / "z.tfrecord")] + folder)
    with pytest.raises(FileNotFoundError, match="no TFRecord files found for '.*nothing"):
        rs.list_record_files([tmp_path, tmp_path / "nothing*"])
