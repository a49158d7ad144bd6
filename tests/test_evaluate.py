"""Benchmark evaluation: the published bicubic baselines, predictor contracts, and the binary."""

import numpy as np
import pytest
import tf_keras as keras
from conftest import require_shared

from keras_sr import evaluate
from keras_sr.data import builtin, load_benchmark


@pytest.mark.parametrize("name, psnr_y, ssim_y, psnr_rgb", [
    ("Set5", 30.40, 0.8689, 28.62),
    ("Set14", 27.54, 0.7745, 25.94),  # 27.63 would mean bridge.png was scored via RGB -> Y
])
def test_bicubic_baseline_matches_the_published_numbers(name, psnr_y, ssim_y, psnr_rgb):
    data_dir = require_shared("data", name)
    result = evaluate.evaluate_benchmark(evaluate.make_predictor("bicubic"), data_dir)
    assert result["psnr_y"] == pytest.approx(psnr_y, abs=0.01)
    assert result["ssim_y"] == pytest.approx(ssim_y, abs=5e-4)
    assert result["psnr_rgb"] == pytest.approx(psnr_rgb, abs=0.01)
    assert result["num_images"] == len(result["per_image"]) == {"Set5": 5, "Set14": 14}[name]
    if name == "Set14":
        bridge = next(m for m in result["per_image"] if m["name"] == "bridge")
        assert bridge["is_gray"] and bridge["psnr_y"] == pytest.approx(24.40, abs=0.01)


@pytest.fixture(scope="module")
def builtin_val(tmp_path_factory):
    path = tmp_path_factory.mktemp("builtin_val")
    builtin.write_benchmark_layout(path)
    return path


def test_keras_model_predictor_runs_whole_images_and_quantises(builtin_val):
    # Nearest-neighbour x3 scaled by 1.5: the predictor must clamp to [0, 1] and round.
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Rescaling(1.5)(keras.layers.UpSampling2D(3)(inputs))
    predictor = evaluate.keras_model_predictor(keras.Model(inputs, outputs))
    _, lr, _, _ = load_benchmark(builtin_val)[0]
    want = np.repeat(np.repeat(lr, 3, axis=0), 3, axis=1).astype(np.float64)
    want = np.clip(np.round(np.float32(want / 255.0) * np.float32(1.5) * 255.0), 0, 255)
    got = predictor(lr)
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.abs(got.astype(np.int64) - want).max() <= 1 and (got == 255).mean() > 0.01


def test_a_predictor_of_the_wrong_size_is_reported(builtin_val):
    with pytest.raises(ValueError, match=r"prediction for chelsea .* expected uint8 \(300, 450"):
        evaluate.evaluate_benchmark(lambda lr: np.zeros((10, 10, 3), np.uint8), builtin_val)
