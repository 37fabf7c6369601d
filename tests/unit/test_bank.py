"""The memory bank and the training patches: leaving a fold's images out, extending, searching, memory-mapping."""

import numpy as np
import pytest
import torch

import patchcore.core.bank as bank_module
from patchcore.core.bank import UNKNOWN_ORIGIN, MemoryBank, TrainingPatches
from patchcore.search import ExactIndex


def test_a_bank_without_a_folds_images_keeps_every_other_row() -> None:
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    bank = MemoryBank(rows, np.array([0, 1, 2, 0, 3, 2]))
    kept = bank.without_images(1, 3)  # images 1 and 2 left out
    np.testing.assert_array_equal(kept.origins, [0, 0, 3])
    np.testing.assert_array_equal(kept.rows, rows[[0, 3, 4]])
    assert kept.index is None  # a new bank is searched only once indexed


def test_an_indexed_bank_finds_its_own_rows_on_its_device() -> None:
    rows = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    bank = MemoryBank(rows, np.zeros(50, dtype=np.int64)).indexed(ExactIndex(), torch.device("cpu"))
    distances, nearest = bank.index.search_tensor(torch.from_numpy(rows[:5]), k=1)
    np.testing.assert_array_equal(nearest[:, 0].numpy(), np.arange(5))
    assert float(distances.max()) < 1e-3 and torch.equal(bank.on_device, torch.from_numpy(rows))


def test_extending_a_bank_appends_rows_and_origins() -> None:
    bank = MemoryBank(np.zeros((2, 3), np.float32), np.full(2, UNKNOWN_ORIGIN))
    extended = bank.extended(MemoryBank(np.ones((1, 3), np.float32), np.array([7]), np.array([[4, 5]])))
    np.testing.assert_array_equal(extended.origins, [UNKNOWN_ORIGIN, UNKNOWN_ORIGIN, 7])
    assert extended.rows.shape == (3, 3) and extended.rows[2].sum() == 3
    assert extended.positions is None  # the old rows' places are unknown, and so are all


def test_learned_proxies_come_from_no_image() -> None:
    proxies = MemoryBank(np.zeros((4, 2), np.float32), None)
    with pytest.raises(ValueError, match="learned proxies"):
        proxies.without_images(0, 1)
    with pytest.raises(ValueError, match="cannot be extended"):
        proxies.extended(MemoryBank(np.zeros((1, 2), np.float32), np.zeros(1, np.int64)))


def test_training_patches_beyond_the_memory_budget_live_in_a_mapped_file(monkeypatch) -> None:
    assert type(TrainingPatches.allocate(10, 4).features) is np.ndarray
    monkeypatch.setattr(bank_module, "PATCHES_IN_MEMORY_BYTES", 100)
    mapped = TrainingPatches.allocate(10, 4)  # 160 bytes
    assert isinstance(mapped.features, np.memmap)
    mapped.features[:] = 1.5
    trimmed = mapped.trimmed(6)
    assert len(trimmed) == 6 and float(trimmed.features.sum()) == 6 * 4 * 1.5
