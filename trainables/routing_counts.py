"""The raw counts behind the token-controlled metrics, kept with every trial as Parquet.

``trainables.specialisation`` computes its metrics from ``n[layer, byte, expert, domain]`` and
``n[layer, sequence, expert]`` (with each evaluation sequence's domain). A trial stores them, so
that a metric defined later, or a different bias correction, can be computed on old runs
without rerunning them. Both are sparse (a byte value occurs in few domains; a trained router
sends a sequence to few experts), so they travel and are stored as their non-zero cells, in one
long table::

    layer: int32   byte: int32 (null on sequence rows)   sequence: int32 (null on byte rows)
    expert: int32  domain: string                         count: int64

A sequence row's ``domain`` is that sequence's domain. Shapes and domain order are in the
schema metadata, so reading gives back exactly the arrays that were written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_METADATA_KEY = b"moe_routing_study.routing_counts"


@dataclass
class RoutingCounts:
    n_LXED: np.ndarray
    """[L, 256, E, D] slots by layer, byte value, expert, domain."""
    n_LQE: np.ndarray
    """[L, Q, E] slots by layer, evaluation sequence, expert."""
    domain_Q: np.ndarray
    """[Q] domain index of each evaluation sequence."""

    def to_sparse(self) -> dict:
        """Non-zero cells as nested lists of ints (what a Tune result can carry)."""
        xed = np.argwhere(self.n_LXED > 0)
        qe = np.argwhere(self.n_LQE > 0)
        return {
            "shape_xed": list(self.n_LXED.shape), "shape_qe": list(self.n_LQE.shape),
            "xed": np.column_stack([xed, self.n_LXED[tuple(xed.T)]]).astype(np.int64).tolist(),
            "qe": np.column_stack([qe, self.n_LQE[tuple(qe.T)]]).astype(np.int64).tolist(),
            "domain_q": self.domain_Q.astype(np.int64).tolist(),
        }

    @classmethod
    def from_sparse(cls, sparse: dict) -> "RoutingCounts":
        n_LXED = np.zeros(sparse["shape_xed"], dtype=np.int64)
        n_LQE = np.zeros(sparse["shape_qe"], dtype=np.int64)
        xed, qe = np.asarray(sparse["xed"], dtype=np.int64), np.asarray(sparse["qe"], dtype=np.int64)
        if len(xed):
            n_LXED[tuple(xed[:, :4].T)] = xed[:, 4]
        if len(qe):
            n_LQE[tuple(qe[:, :3].T)] = qe[:, 3]
        return cls(n_LXED, n_LQE, np.asarray(sparse["domain_q"], dtype=np.int64))


def routing_counts_to_arrow(counts: RoutingCounts, domains: list[str]) -> pa.Table:
    L, X, E, D = counts.n_LXED.shape
    if len(domains) != D:
        raise ValueError(f"{len(domains)} domain names for {D} domain columns")
    xed = np.argwhere(counts.n_LXED > 0)
    qe = np.argwhere(counts.n_LQE > 0)
    names = np.asarray(domains, dtype=object)
    n_x, n_q = len(xed), len(qe)
    table = pa.table({
        "layer": pa.array(np.concatenate([xed[:, 0], qe[:, 0]]), pa.int32()),
        "byte": pa.array(np.concatenate([xed[:, 1], np.zeros(n_q, np.int64)]), pa.int32(),
                         mask=np.concatenate([np.zeros(n_x, bool), np.ones(n_q, bool)])),
        "sequence": pa.array(np.concatenate([np.zeros(n_x, np.int64), qe[:, 1]]), pa.int32(),
                             mask=np.concatenate([np.ones(n_x, bool), np.zeros(n_q, bool)])),
        "expert": pa.array(np.concatenate([xed[:, 2], qe[:, 2]]), pa.int32()),
        "domain": pa.array(np.concatenate([names[xed[:, 3]], names[counts.domain_Q[qe[:, 1]]]]), pa.string()),
        "count": pa.array(np.concatenate([counts.n_LXED[tuple(xed.T)], counts.n_LQE[tuple(qe.T)]]), pa.int64()),
    })
    metadata = {"domains": list(domains), "shape_xed": [L, X, E, D], "shape_qe": list(counts.n_LQE.shape),
                "domain_q": counts.domain_Q.astype(int).tolist()}
    return table.replace_schema_metadata({_METADATA_KEY: json.dumps(metadata).encode()})


def routing_counts_from_arrow(table: pa.Table) -> tuple[RoutingCounts, list[str]]:
    meta = json.loads(table.schema.metadata[_METADATA_KEY])
    domains = meta["domains"]
    index = {d: i for i, d in enumerate(domains)}
    n_LXED = np.zeros(meta["shape_xed"], dtype=np.int64)
    n_LQE = np.zeros(meta["shape_qe"], dtype=np.int64)
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    for layer, byte, seq, expert, domain, count in zip(
            cols["layer"], cols["byte"], cols["sequence"], cols["expert"], cols["domain"], cols["count"]):
        if byte is not None:
            n_LXED[layer, byte, expert, index[domain]] = count
        else:
            n_LQE[layer, seq, expert] = count
    return RoutingCounts(n_LXED, n_LQE, np.asarray(meta["domain_q"], dtype=np.int64)), domains


def write_routing_counts(path: str | PathLike, counts: RoutingCounts, domains: list[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(routing_counts_to_arrow(counts, domains), path, compression="zstd")
    return path


def read_routing_counts(path: str | PathLike) -> tuple[RoutingCounts, list[str]]:
    return routing_counts_from_arrow(pq.read_table(path))
