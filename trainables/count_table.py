"""The expert x domain count table ``n[layer, expert, domain]`` as a Parquet file.

Every trial stores its evaluation-set routing counts as an artifact so that metrics and
heatmaps can be recomputed later without rerunning anything. The file is in long format, one
row per cell (zeros included, so the shape survives)::

    layer: int32   expert: int32   domain: string   count: int64 | float64

The domain order and the [L, E, D] shape are also kept in the schema metadata, so reading gives
back exactly the array and domain list that were written. A long table written by other tools
(no metadata) is read too: domains in order of first appearance, missing cells as 0.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainables.metrics import as_numpy

_METADATA_KEY = b"moe_routing_study.count_table"


def _counts_array(n_LED) -> np.ndarray:
    """Counts as numpy, keeping an integer dtype when the counts are integers."""
    if hasattr(n_LED, "detach"):  # torch.Tensor
        n_LED = n_LED.detach().cpu().numpy()
    array = np.asarray(n_LED)
    as_numpy(array)  # validates: finite, non-negative
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return array.astype(np.int64)
    return array.astype(np.float64)


def count_table_to_arrow(n_LED, domains: list[str]) -> pa.Table:
    """Long-format Arrow table of ``n_LED`` [L, E, D] with one row per (layer, expert, domain)."""
    counts_LED = _counts_array(n_LED)
    domains = [str(d) for d in domains]
    if counts_LED.ndim != 3:
        raise ValueError(f"expected counts [L, E, D], got shape {counts_LED.shape}")
    n_layers, n_experts, n_domains = counts_LED.shape
    if len(domains) != n_domains:
        raise ValueError(f"{len(domains)} domain names for {n_domains} domain columns")
    if len(set(domains)) != len(domains):
        raise ValueError(f"duplicate domain names: {domains}")

    layer_LED, expert_LED, domain_LED = np.indices(counts_LED.shape)
    table = pa.table(
        {
            "layer": pa.array(layer_LED.reshape(-1), pa.int32()),
            "expert": pa.array(expert_LED.reshape(-1), pa.int32()),
            "domain": pa.array(np.asarray(domains, dtype=object)[domain_LED.reshape(-1)],
                               pa.string()),
            "count": pa.array(counts_LED.reshape(-1)),
        }
    )
    metadata = {"domains": domains, "shape": [n_layers, n_experts, n_domains]}
    return table.replace_schema_metadata({_METADATA_KEY: json.dumps(metadata).encode()})


def count_table_from_arrow(table: pa.Table) -> tuple[np.ndarray, list[str]]:
    """Inverse of ``count_table_to_arrow``: ``(n_LED, domains)``."""
    missing = {"layer", "expert", "domain", "count"} - set(table.column_names)
    if missing:
        raise ValueError(f"count table lacks columns {sorted(missing)}")
    layers = np.asarray(table.column("layer").to_numpy(), dtype=np.int64)
    experts = np.asarray(table.column("expert").to_numpy(), dtype=np.int64)
    domain_names = table.column("domain").to_pylist()
    counts = table.column("count").to_numpy()

    metadata = (table.schema.metadata or {}).get(_METADATA_KEY)
    if metadata is not None:
        stored = json.loads(metadata)
        domains = list(stored["domains"])
        shape = tuple(stored["shape"])
    else:
        domains = list(dict.fromkeys(domain_names))
        shape = (
            int(layers.max()) + 1 if len(layers) else 0,
            int(experts.max()) + 1 if len(experts) else 0,
            len(domains),
        )
    domain_index = {name: i for i, name in enumerate(domains)}
    unknown = set(domain_names) - set(domain_index)
    if unknown:
        raise ValueError(f"count table has domains {sorted(unknown)} not in its metadata")
    if len(layers) and (layers.min() < 0 or experts.min() < 0
                        or layers.max() >= shape[0] or experts.max() >= shape[1]):
        raise ValueError(f"count table has layer/expert indices outside its shape {shape}")

    counts_LED = np.zeros(shape, dtype=counts.dtype if len(counts) else np.int64)
    filled_LED = np.zeros(shape, dtype=np.int64)
    domain_ids = np.array([domain_index[name] for name in domain_names], dtype=np.int64)
    counts_LED[layers, experts, domain_ids] = counts
    np.add.at(filled_LED, (layers, experts, domain_ids), 1)
    if (filled_LED > 1).any():
        raise ValueError("count table has more than one row for a (layer, expert, domain) cell")
    return counts_LED, domains


def write_count_table(path: str | PathLike, n_LED, domains: list[str]) -> Path:
    """Write ``n_LED`` [L, E, D] with its domain names as a zstd-compressed Parquet file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(count_table_to_arrow(n_LED, domains), path, compression="zstd")
    return path


def read_count_table(path: str | PathLike) -> tuple[np.ndarray, list[str]]:
    """Read a count table written by ``write_count_table``: ``(n_LED, domains)``."""
    return count_table_from_arrow(pq.read_table(path))
