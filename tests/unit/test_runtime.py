"""The feature network under ONNX Runtime: the same features and scores as eager torch, exported once per size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patchcore import PatchCore
from patchcore.core.runtime import OnnxRuntimeNetwork, cache_folder

pytest.importorskip("onnxruntime")


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PATCHCORE_CACHE", str(tmp_path / "cache"))
    return cache_folder()


def test_features_equal_torch_on_non_square_batches_and_the_export_is_cached(fitted_model, cache: Path) -> None:
    extractor = fitted_model.extractor_
    images = torch.randn(3, 3, 96, 160, generator=torch.Generator().manual_seed(0))
    expected = extractor(images.contiguous(memory_format=torch.channels_last))
    network = OnnxRuntimeNetwork(extractor)
    features = network(images)
    assert features.shape == expected.shape == (3, 12, 20, extractor.feature_dim)
    np.testing.assert_allclose(features.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(network(images[:1]).numpy(), expected[:1].numpy(), rtol=1e-4, atol=1e-4)
    files = sorted(path.name for path in cache.iterdir())  # one export per shape, batch size included
    assert len(files) == 2 and files[0].endswith("-1x3x96x160.onnx") and files[1].endswith("-3x3x96x160.onnx")
    # A new process (here: a new wrapper) loads the file instead of exporting; a damaged file is exported again.
    (cache / files[1]).write_bytes(b"not onnx")
    again = OnnxRuntimeNetwork(extractor)(images)
    np.testing.assert_allclose(again.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    assert (cache / files[1]).stat().st_size > 1000


def test_a_model_scores_alike_under_both_runtimes_and_loads_with_either(train_crops, good_test_crops, defect_crop,
                                                                        cache: Path, tmp_path: Path) -> None:
    from patchcore.methods import load_model

    settings = dict(coreset_ratio=0.1, image_size=128, threshold_folds=2)
    images = [good_test_crops[0], defect_crop[0]]
    eager = PatchCore(**settings).fit(train_crops[:12])
    onnx = PatchCore(runtime="onnxruntime", **settings).fit(train_crops[:12])
    np.testing.assert_allclose(onnx.memory_bank_, eager.memory_bank_, rtol=1e-4, atol=1e-4)
    scores = [p.score for p in onnx.predict(images)]
    np.testing.assert_allclose(scores, [p.score for p in eager.predict(images)], rtol=1e-4)
    assert scores[1] > scores[0]
    eager.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model", runtime="onnxruntime")
    assert loaded.runtime == "onnxruntime" and isinstance(loaded._network, OnnxRuntimeNetwork)
    np.testing.assert_allclose(loaded.score_samples(images), scores, rtol=1e-4)


def test_onnxruntime_refuses_what_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="float32; precision 'bfloat16' needs runtime 'torch'"):
        PatchCore(runtime="onnxruntime", precision="bfloat16")._check_params()
    with pytest.raises(ValueError, match="runtime must be one of torch, onnxruntime"):
        PatchCore(runtime="openvino")._check_params()
