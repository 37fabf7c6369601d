"""CUDA-graph replay of the network: captured per shape on CUDA, the same results as running it eagerly."""

import numpy as np
import pytest
import torch

from patchcore import PatchCore
from patchcore.core.replay import GraphReplay


def test_off_cuda_the_function_runs_as_it_is() -> None:
    calls = []

    def double(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape)
        return batch * 2

    replay = GraphReplay(double, warm_calls=0)
    batch = torch.arange(6.0).reshape(2, 3)
    for _ in range(4):
        assert torch.equal(replay(batch), batch * 2)
    assert len(calls) == 4 and not replay._graphs


@pytest.mark.gpu
def test_each_shape_is_captured_after_its_warm_calls_and_replays_new_inputs() -> None:
    def function(batch: torch.Tensor) -> torch.Tensor:
        return torch.relu(batch @ batch.transpose(-1, -2)).sum(dim=-1)

    replay = GraphReplay(function, max_graphs=2, warm_calls=2)
    generator = torch.Generator(device="cuda").manual_seed(0)
    for call in range(5):
        batch = torch.randn(4, 8, 16, device="cuda", generator=generator)
        torch.testing.assert_close(replay(batch), function(batch))
        assert len(replay._graphs) == (0 if call < 2 else 1)
    outputs = [replay(torch.full((4, 8, 16), float(v), device="cuda")) for v in (1, 2)]
    assert not torch.equal(outputs[0], outputs[1])  # each call its own copy, not the graph's static output
    for rows in (2, 3, 5):  # three more shapes, two kept: the least recently used is dropped
        for _ in range(3):
            replay(torch.randn(rows, 8, 16, device="cuda"))
    assert len(replay._graphs) == 2


@pytest.mark.gpu
def test_replayed_network_gives_the_eager_scores_and_maps(train_crops, good_test_crops, defect_crop) -> None:
    model = PatchCore(coreset_ratio=0.1, image_size=128, device="cuda", batch_size=1).fit(train_crops)
    images = [*good_test_crops[:3], defect_crop[0]] * 2  # batch 1: the shape is captured on its third call
    replayed = [model.predict([image])[0] for image in images]
    assert model._network._graphs
    model._network = model.extractor_
    eager = [model.predict([image])[0] for image in images]
    for graph_result, eager_result in zip(replayed, eager):
        assert graph_result.score == pytest.approx(eager_result.score, rel=1e-4)
        np.testing.assert_allclose(graph_result.anomaly_map, eager_result.anomaly_map, rtol=1e-4, atol=1e-4)
    assert eager[3].score > max(result.score for result in eager[:3])  # the defect still stands out
