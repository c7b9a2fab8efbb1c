"""Bags stay on disk: validated in chunks, read row by row, same errors as a whole read."""

from __future__ import annotations

import numpy as np
import pytest

from rmmfed.core.data import bag_file
from rmmfed.core.data.bag_file import BagFile, bag_array, bag_mean, bag_rows, open_bag
from rmmfed.core.errors import SiteDataError


def _save(tmp_path, array, name="p0.npy"):
    path = tmp_path / name
    np.save(path, array)
    return path


def test_open_bag_reads_only_the_header_and_rows_match_the_file(tmp_path):
    array = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32)
    bag = open_bag(_save(tmp_path, array), "pathology")

    assert isinstance(bag, BagFile) and bag.shape == (50, 7) and len(bag) == 50 and bag.nbytes == 50 * 7 * 4
    np.testing.assert_array_equal(bag.rows(np.array([3, 10, 49])), array[[3, 10, 49]])
    np.testing.assert_array_equal(bag[5:8], array[5:8])
    np.testing.assert_array_equal(bag.read(), array)
    np.testing.assert_allclose(bag.mean(), array.astype(np.float64).mean(axis=0))


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", ["<f8", ">f4", "<i2"])
def test_any_real_dtype_and_order_reads_as_float32(tmp_path, order, dtype):
    array = np.asarray(np.random.default_rng(1).normal(size=(9, 5)) * 10, dtype=dtype, order=order)
    bag = open_bag(_save(tmp_path, array), "radiology")

    got = bag.read()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, array.astype(np.float32))
    np.testing.assert_allclose(np.concatenate(list(bag.chunks(max_bytes=64))), array.astype(np.float32))


def test_chunked_scan_finds_a_nan_in_the_last_chunk(tmp_path, monkeypatch):
    array = np.zeros((400, 8), dtype=np.float32)
    array[-1, -1] = np.nan
    monkeypatch.setattr(bag_file, "CHUNK_BYTES", 256)  # 8 rows per chunk: 50 chunks

    with pytest.raises(SiteDataError, match=r"p0\.npy: field 'report features'.*1 NaN/Inf"):
        open_bag(_save(tmp_path, array), "report")


def test_chunks_hold_at_most_the_byte_budget(tmp_path):
    bag = open_bag(_save(tmp_path, np.ones((1000, 16), dtype=np.float32)), "pathology")

    sizes = [block.nbytes for block in bag.chunks(max_bytes=4096)]
    assert max(sizes) <= 4096 and sum(len(b) for b in bag.chunks(max_bytes=4096)) == 1000


def test_truncated_file_names_the_promised_size(tmp_path):
    path = _save(tmp_path, np.ones((100, 4)))
    path.write_bytes(path.read_bytes()[:-8])

    with pytest.raises(SiteDataError, match=r"p0\.npy: field 'pathology features'.*truncated.*Fix: re-export"):
        open_bag(path, "pathology")


def test_one_dimensional_file_is_one_instance(tmp_path):
    bag = open_bag(_save(tmp_path, np.arange(6.0)), "report")

    assert bag.shape == (1, 6)
    np.testing.assert_array_equal(bag.read(), np.arange(6.0, dtype=np.float32)[None])


def test_helpers_accept_in_memory_arrays_and_bag_files_alike(tmp_path):
    array = np.random.default_rng(2).normal(size=(6, 3))
    bag = open_bag(_save(tmp_path, array), "pathology")
    rows = np.array([0, 4])

    np.testing.assert_allclose(bag_rows(bag, rows), bag_rows(array, rows), rtol=1e-6)
    np.testing.assert_allclose(bag_array(bag), bag_array(array), rtol=1e-6)
    np.testing.assert_allclose(bag_mean(bag), bag_mean(array.astype(np.float32)), rtol=1e-6)


def test_reloading_without_the_value_scan_still_checks_header_and_size(tmp_path):
    array = np.ones((4, 3))
    array[2, 1] = np.inf
    path = _save(tmp_path, array)

    assert open_bag(path, "pathology", scan=False).shape == (4, 3)  # values were scanned by an earlier load
    with pytest.raises(SiteDataError, match="NaN/Inf"):
        open_bag(path, "pathology")
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(SiteDataError, match="truncated"):
        open_bag(path, "pathology", scan=False)
