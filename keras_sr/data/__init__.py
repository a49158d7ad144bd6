"""Data: the MATLAB bicubic rule, image sources, SR records, benchmark sets, the training pipeline.

Importing this package does not import TensorFlow (tools/prepare_data.py runs without it);
`make_train_dataset` and `pipeline_throughput` load `keras_sr.data.pipeline` on first use.
"""
from keras_sr.data.benchmark import load_benchmark, write_benchmark_layout
from keras_sr.data.matlab_resize import matlab_downscale, matlab_upscale, modcrop
from keras_sr.data.prepare import prepare_benchmark, prepare_records
from keras_sr.data.sources import check_sources, parse_source

_PIPELINE = ("make_train_dataset", "pipeline_throughput")

__all__ = ["load_benchmark", "write_benchmark_layout", "matlab_downscale", "matlab_upscale",
           "modcrop", "check_sources", "parse_source", "prepare_benchmark", "prepare_records", *_PIPELINE]


def __getattr__(name):
    if name in _PIPELINE:
        from keras_sr.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
