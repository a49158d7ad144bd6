"""TensorFlow reader for the record contract of `keras_sr.common.record_schema`.

The schema module is dependency-free; this module turns its key table into a `tf.io` parsing spec so the
TensorFlow side can never drift from what the teacher job writes.
"""
import tensorflow as tf

from keras_sr.common import record_schema

_DTYPES = {record_schema.BYTES: tf.string, record_schema.INT64: tf.int64,
           record_schema.FLOAT: tf.float32}


def feature_spec(schema):
    """`tf.io.parse_single_example` spec for SR_FEATURES or TEACHER_FEATURES."""
    return {key: tf.io.FixedLenFeature([], _DTYPES[kind]) for key, (kind, _) in schema.items()}


def parse(serialized, schema):
    """Parses one serialized record (scalar tf.string) into a dict of scalar tensors."""
    return tf.io.parse_single_example(serialized, feature_spec(schema))
