"""The expert x domain count table survives Parquet unchanged."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainables.count_table import (
    count_table_from_arrow,
    count_table_to_arrow,
    read_count_table,
    write_count_table,
)

DOMAINS = ["english", "python", "json"]


def test_long_format_rows_and_columns():
    n_LED = np.arange(2 * 4 * 3).reshape(2, 4, 3)
    table = count_table_to_arrow(n_LED, DOMAINS)
    assert table.column_names == ["layer", "expert", "domain", "count"]
    assert table.num_rows == 2 * 4 * 3
    rows = table.to_pylist()
    # Every row names its cell: check each against the array.
    for row in rows:
        d = DOMAINS.index(row["domain"])
        assert row["count"] == n_LED[row["layer"], row["expert"], d]
    assert {(r["layer"], r["expert"], r["domain"]) for r in rows} == {
        (layer, expert, domain) for layer in range(2) for expert in range(4) for domain in DOMAINS
    }


@pytest.mark.parametrize("dtype", [np.int64, np.float64])
def test_parquet_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    n_LED = rng.integers(0, 1000, size=(3, 6, 3)).astype(dtype)
    n_LED[1, 2, :] = 0  # a dead expert: zero rows must survive too
    domains = ["zeta", "alpha", "mid"]  # not sorted: order must be kept
    path = write_count_table(tmp_path / "sub" / "n_LED.parquet", n_LED, domains)

    counts, read_domains = read_count_table(path)
    assert read_domains == domains
    assert counts.dtype == dtype
    np.testing.assert_array_equal(counts, n_LED)
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_fractional_counts_round_trip(tmp_path):
    n_LED = np.array([[[0.5, 1.25], [3.0, 0.0]]])
    counts, domains = read_count_table(write_count_table(tmp_path / "n.parquet", n_LED, ["a", "b"]))
    np.testing.assert_array_equal(counts, n_LED)
    assert domains == ["a", "b"]


def test_torch_counts_are_accepted(tmp_path):
    torch = pytest.importorskip("torch")
    n_LED = torch.tensor([[[1, 2], [3, 4]]])
    counts, _ = read_count_table(write_count_table(tmp_path / "n.parquet", n_LED, ["a", "b"]))
    np.testing.assert_array_equal(counts, [[[1, 2], [3, 4]]])


def test_table_without_metadata_is_read_with_missing_cells_as_zero():
    table = pa.table({
        "layer": [0, 0, 1],
        "expert": [0, 1, 1],
        "domain": ["b", "a", "b"],
        "count": [5, 7, 9],
    })
    counts, domains = count_table_from_arrow(table)
    assert domains == ["b", "a"]  # order of first appearance
    np.testing.assert_array_equal(counts, [[[5, 0], [0, 7]], [[0, 0], [9, 0]]])


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="domain names"):
        count_table_to_arrow(np.ones((1, 2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        count_table_to_arrow(np.ones((1, 2, 2)), ["a", "a"])
    with pytest.raises(ValueError, match="L, E, D"):
        count_table_to_arrow(np.ones((2, 3)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="non-negative"):
        count_table_to_arrow(-np.ones((1, 1, 1)), ["a"])
    duplicated = pa.table(
        {"layer": [0, 0], "expert": [0, 0], "domain": ["a", "a"], "count": [1, 2]}
    )
    with pytest.raises(ValueError, match="more than one row"):
        count_table_from_arrow(duplicated)
