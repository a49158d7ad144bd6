"""Round trip of the teacher/student record contract: written without TensorFlow, read with it."""
import numpy as np
import pytest
import tensorflow as tf

from keras_sr.data import records
from teacher_bridge import record_schema as rs


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
