"""``moe-study best`` over an MLflow store holding 10,000 trial runs.

Builds (once; reused from ``--store``) a sqlite MLflow store whose experiment holds N trial runs
logged the way the study tracker logs them: the same tags (role, study, trial id, method,
scope, parent, stopped early: a third of them), the whole resolved trial config as params (~45),
every summary and per-domain metric at two evaluation steps. Then times, interleaved, median of ``--repeats``:

- ``python -c pass``             the interpreter alone;
- ``import mlflow``              what any MLflow client pays before its first query;
- ``moe-study best``             the CLI as users run it: top 10 by gap_purity (a fresh process);
- ``moe-study best --where``     the same with a param filter (``method=lbl,scope=global_batch``);
- ``best_runs()`` in-process     the query alone, imports done;
- ``... via MlflowClient``       the same query through ``MlflowClient.search_runs`` (what every
                                 query did before ``study.results.fast_queries``);
- ``... mlflow server``          the CLI against an ``mlflow server`` on loopback serving the
                                 same store (``--no-server`` skips it).

    python bench/query.py [--runs 10000] [--store /tmp/moe-bench-query] [--repeats 5] [--no-server]

The last line is the headline: the CLI's seconds against the 2 s target.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, run as a script
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.e2e.servers
from common import format_table, load_average, medians, spread, time_interleaved  # noqa: E402

from study import naming  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402

EXPERIMENT = "bench_query"
DOMAINS = ("english", "german", "chinese", "python", "c", "json")
METHODS = ("none", "lbl", "eb", "sh", "ba")
SCOPES = ("sequence", "micro_batch", "global_batch")
TARGET_S = 2.0


def trial_run(i: int, rng: random.Random) -> tuple[dict, dict, dict]:
    """Tags, params and final metrics of one synthetic trial, shaped like the tracker's."""
    cfg = TrialConfig()
    cfg.router.method, cfg.router.scope = rng.choice(METHODS), rng.choice(SCOPES)
    cfg.router.lbl_coef = round(10 ** rng.uniform(-3, -0.5), 5)
    cfg.router.capacity_factor = rng.choice([0.0, 1.0, 1.25])
    cfg.train.seed = i % 5
    params = {k: str(v) for k, v in cfg.to_flat().items() if not isinstance(v, (list, dict))}
    purity = rng.uniform(0.15, 0.6)
    metrics = {naming.PURITY: purity, naming.GAP_PURITY: 1 - purity,
               naming.VAL_LOSS: rng.uniform(2.0, 3.0), naming.GAP_LOSS: rng.uniform(0, 0.3),
               naming.NMI: rng.uniform(0.1, 0.5), naming.REFERENCE_AGREEMENT: rng.uniform(0, 0.5),
               naming.LOAD_ENTROPY: rng.uniform(0.8, 1.0), naming.MAX_VIO: rng.uniform(0, 2),
               naming.DEAD_EXPERT_FRACTION: rng.uniform(0, 0.2), naming.DROPPED_FRACTION: 0.0,
               "train_loss": rng.uniform(2, 3), "tokens_per_s": rng.uniform(5e3, 2e4)}
    for d in DOMAINS:
        metrics[f"val_loss/{d}"] = rng.uniform(1.5, 3.5)
        metrics[f"purity/{d}"] = rng.uniform(0.1, 0.9)
    tags = {naming.TAG_ROLE: naming.ROLE_TRIAL, naming.TAG_STUDY: EXPERIMENT,
            naming.TAG_TRIAL_ID: f"bench{i:05d}", naming.TAG_METHOD: cfg.router.method,
            naming.TAG_SCOPE: cfg.router.scope, "mlflow.runName": f"trial-bench{i:05d}",
            # an ASHA study: a third of the trials stopped early (and left out of `best`)
            naming.TAG_STOPPED_EARLY: "true" if i % 3 == 0 else "false"}
    return tags, params, metrics


def build_store(path: Path, n_runs: int) -> str:
    """The sqlite store with ``n_runs`` trial runs (built once; a complete store is reused)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = f"sqlite:///{path / 'mlflow.db'}"
    done = path / f"complete-v2-{n_runs}"  # v2: trials carry the stopped-early tag
    if done.exists():
        return uri
    path.mkdir(parents=True, exist_ok=True)
    (path / "mlflow.db").unlink(missing_ok=True)
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=str(path / "artifacts"))
    parent = client.create_run(exp, tags={naming.TAG_ROLE: naming.ROLE_STUDY,
                                          naming.TAG_STUDY: EXPERIMENT}).info.run_id
    rng = random.Random(0)
    t0 = time.perf_counter()
    for i in range(n_runs):
        tags, params, metrics = trial_run(i, rng)
        run_id = client.create_run(exp, tags={**tags, naming.TAG_PARENT_RUN: parent}).info.run_id
        logged = [Metric(k, v * s, 0, step) for k, v in metrics.items() for step, s in ((75, 0.9), (150, 1.0))]
        items = list(params.items())
        client.log_batch(run_id, metrics=logged, params=[Param(k, v) for k, v in items[:90]])
        client.set_terminated(run_id)
        if (i + 1) % 1000 == 0:
            print(f"  built {i + 1}/{n_runs} runs ({time.perf_counter() - t0:.0f} s)", flush=True)
    client.set_terminated(parent)
    done.touch()
    return uri


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--store", default="/tmp/moe-bench-query", help="where the store is built / reused")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-server", action="store_true", help="skip the mlflow server cases")
    args = p.parse_args()

    print(f"building / reusing the store of {args.runs} runs in {args.store} ...", flush=True)
    uri = build_store(Path(args.store), args.runs)
    cli = [sys.executable, "-m", "study.cli", "best", EXPERIMENT, "--tracking-uri", uri]

    def run(cmd: list[str]):
        def call() -> None:
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
        return call

    from study.results.queries import best_runs

    rows = best_runs(uri, EXPERIMENT, top=10)
    assert len(rows) == 10 and rows[0]["gap_purity"] <= rows[-1]["gap_purity"], rows
    via_client = ("from study.results.queries import Query, _best_runs_with_client; "
                  f"_best_runs_with_client({uri!r}, Query({EXPERIMENT!r}, 'gap_purity', True, 10, False))")
    cases = {
        "python -c pass": run([sys.executable, "-c", "pass"]),
        "import mlflow": run([sys.executable, "-c", "import mlflow"]),
        "moe-study best": run(cli),
        "moe-study best --where": run([*cli, "--where", "method=lbl,scope=global_batch"]),
        "best_runs() in-process": lambda: best_runs(uri, EXPERIMENT, top=10),
        "best via MlflowClient (process)": run([sys.executable, "-c", via_client]),
    }
    server = None
    if not args.no_server:
        from tests.e2e.servers import MlflowServer

        server = MlflowServer(Path(args.store)).start()  # serves the same mlflow.db
        assert best_runs(server.uri, EXPERIMENT, top=10) == rows
        cases["moe-study best, mlflow server"] = run([*cli[:-1], server.uri])
    load_before = load_average()
    try:
        times = time_interleaved(cases, repeats=args.repeats, warmup=1)
    finally:
        if server is not None:
            server.stop()
    med = medians(times)
    print(f"\n{args.runs} trial runs, sqlite store; load average {load_before} -> {load_average()}\n")
    print(format_table(["case", "median s", "IQR/med"],
                       [[name, f"{med[name]:.2f}", f"{spread(ts):.2f}"] for name, ts in times.items()]))
    worst = max(v for k, v in med.items() if k.startswith("moe-study best"))
    print(f"\nheadline: moe-study best over {args.runs} runs {worst:.2f} s "
          f"(target <= {TARGET_S:.0f} s: {'met' if worst <= TARGET_S else 'missed'})")


if __name__ == "__main__":
    main()
