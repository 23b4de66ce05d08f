"""Money: the spec's price table (``cost``), what each run and a whole study cost under it, the
report's verdict line and ``moe-study best --show-cost``; every amount checked against numbers
worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study import naming
from study.cli import main
from study.results.cost import BY_NODE_TYPE, BY_RESOURCE_HOUR, money_text, run_money, study_money
from study.results.records import RunRecord
from study.spec import load_spec, spec_from_dict
from study.spec.types import CostSpec, NodePrice

from tests.study.test_report import Store, section, trial_metrics, trial_params

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "search_spaces" / "smoke.yaml"
A10G = "ray.worker.gpu_a10g"
PRICES = {"per_cpu_hour": 0.05, "per_gpu_hour": 1.2, "currency": "USD",
          "per_node_type": {A10G: {"per_hour": 1.006, "cpu": 4, "gpu": 1},
                            "ray.worker.gpu_l40s_x4": {"per_hour": 10.48, "cpu": 48, "gpu": 4}}}


def table() -> CostSpec:
    return spec_from_dict({"name": "priced", "search": {"train.seed": {"choice": [0, 1]}}, "sampler": "grid",
                           "cost": PRICES}).cost


# -- the spec's section --------------------------------------------------------------------------
def test_price_table_is_read_kept_in_the_spec_dict_and_left_out_of_its_hash():
    spec = spec_from_dict({"name": "priced", "search": {"train.seed": {"choice": [0, 1]}}, "sampler": "grid", "cost": PRICES})
    assert spec.cost == CostSpec(0.05, 1.2, "USD", {A10G: NodePrice(1.006, 4, 1),
                                                    "ray.worker.gpu_l40s_x4": NodePrice(10.48, 48, 4)})
    assert spec_from_dict(spec.to_dict()).cost == spec.cost  # the parent run's artifact reads back
    unpriced = spec_from_dict({"name": "priced", "search": {"train.seed": {"choice": [0, 1]}}, "sampler": "grid"})
    assert unpriced.cost is None and "cost" not in unpriced.to_dict()
    # prices say nothing about what runs: a study may be repriced and still resumed
    assert spec.content_hash() == unpriced.content_hash()


@pytest.mark.parametrize("setting, problem", [
    ("cost.per_gpu_hour=-1", "cost.per_gpu_hour: expected a number >= 0 (got -1)"),
    ("cost.per_cpu_hour=.inf", "cost.per_cpu_hour: expected a finite number"),
    ("cost.per_cpu_hr=0.05", "cost.per_cpu_hr: unknown key; did you mean 'per_cpu_hour'?"),
    ("cost.currency=dollars", "cost.currency: expected a three-letter ISO 4217 code"),
    ("cost.currency=usd", "cost.currency: expected a three-letter ISO 4217 code"),
    ("cost={currency: EUR}", "cost: gives no price"),
    ("cost=cheap", "cost: expected a mapping"),
    ("cost.per_node_type={gpu: 1.006}", "cost.per_node_type.gpu: expected a mapping such as"),
    ("cost.per_node_type={gpu: {cpu: 4, gpu: 1}}", "cost.per_node_type.gpu.per_hour: required"),
    ("cost.per_node_type={gpu: {per_hour: 1.0}}", "cost.per_node_type.gpu: give what the node offers"),
    ("cost.per_node_type={gpu: {per_hour: 1.0, gpus: 1}}",
     "cost.per_node_type.gpu.gpus: unknown key; did you mean 'gpu'?"),
])
def test_a_bad_price_table_exits_2_naming_the_key(setting, problem, capsys):
    assert main(["validate", str(SMOKE), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert f"--set {setting}: {problem}" in err, err


def test_a_price_table_given_with_set_passes_validate(capsys):
    assert main(["validate", str(SMOKE), "--set", "cost.per_cpu_hour=0.05"]) == 0
    assert "  prices: 0.05 USD a CPU-hour, 0 a GPU-hour" in capsys.readouterr().out
    assert load_spec(SMOKE, sets=["cost.per_cpu_hour=0.05"]).cost.per_cpu_hour == 0.05


# -- the arithmetic --------------------------------------------------------------------------------
def cost_metrics(cpu_s: float, gpu_s: float) -> dict[str, float]:
    return {naming.COST_CPU_S: cpu_s, naming.COST_GPU_S: gpu_s}


def test_a_run_without_a_priced_node_type_pays_per_cpu_and_gpu_hour():
    prices = table()
    # 2 CPU-hours at 0.05 and 1 GPU-hour at 1.2: 0.10 + 1.20
    assert run_money(cost_metrics(7200, 3600), {}, prices) == (pytest.approx(1.30), BY_RESOURCE_HOUR)
    # a node type the table does not list: the same rates
    tags = {naming.TAG_NODE_TYPE: "ray.worker.cpu_spot"}
    assert run_money(cost_metrics(7200, 3600), tags, prices) == (pytest.approx(1.30), BY_RESOURCE_HOUR)
    # CPU only, half an hour on 1 CPU: 0.5 x 0.05
    assert run_money(cost_metrics(1800, 0), {}, prices)[0] == pytest.approx(0.025)
    # nothing logged (a run that failed before it reported): nothing charged
    assert run_money({}, {}, prices)[0] == 0.0


def test_a_run_on_a_priced_node_type_pays_its_share_of_the_node():
    prices = table()
    # 1 GPU + 1 CPU for half an hour on an A10G node (4 CPUs, 1 GPU): the GPU share, all of the
    # node, binds: 0.5 node-hours x 1.006
    a10g = {naming.TAG_NODE_TYPE: A10G}
    assert run_money(cost_metrics(1800, 1800), a10g, prices) == (pytest.approx(0.503), BY_NODE_TYPE)
    # 1 GPU + 4 CPUs for an hour on the 4-GPU, 48-CPU node: GPU share 1/4 > CPU share 4/48,
    # 0.25 node-hours x 10.48
    l40s = {naming.TAG_NODE_TYPE: "ray.worker.gpu_l40s_x4"}
    assert run_money(cost_metrics(4 * 3600, 3600), l40s, prices)[0] == pytest.approx(2.62)
    # 24 CPUs and no GPU for an hour there: the CPU share, half the node, binds: 0.5 x 10.48
    assert run_money(cost_metrics(24 * 3600, 0), l40s, prices)[0] == pytest.approx(5.24)
    # a data-parallel trial on two A10G nodes for an hour: 2 node-hours
    assert run_money(cost_metrics(2 * 3600, 2 * 3600), a10g, prices)[0] == pytest.approx(2.012)


def record(name: str, cpu_s: float, gpu_s: float, node_type: str | None = None) -> RunRecord:
    return RunRecord(run_id=name, name=name, role=naming.ROLE_TRIAL, status="FINISHED", parent_id=None,
                     metrics=cost_metrics(cpu_s, gpu_s),
                     tags={naming.TAG_NODE_TYPE: node_type} if node_type else {})


def test_a_study_sums_its_runs_and_counts_how_each_was_priced():
    runs = [record("a", 1800, 1800, A10G), record("b", 1800, 1800, A10G),
            record("c", 7200, 3600), record("d", 3600, 0, "unknown")]
    money = study_money(runs, table())
    # 2 x 0.503 + 1.30 + 0.05
    assert money.total == pytest.approx(2.356)
    assert (money.runs_by_node_type, money.runs_by_resource_hour, money.currency) == (2, 2, "USD")
    assert money.amount() == "2.36 USD"


def test_small_amounts_keep_their_digits():
    assert money_text(0.0, "USD") == "0.00 USD"
    assert money_text(0.0123, "EUR") == "0.01 EUR"
    assert money_text(0.000417, "USD") == "0.00042 USD"  # a smoke study: not "0.00"
    assert money_text(1234.5, "USD") == "1234.50 USD"


# -- the report and best ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def priced_store(tmp_path_factory):
    """Two scopes x three seeds of LBL, each trial 1 GPU + 1 CPU: the global-batch ones on A10G
    nodes for half an hour (0.503 USD each), the micro-batch ones untagged (an older run or a
    cluster without node types) for 2 CPU-hours and 1 GPU-hour (1.30 USD each)."""
    s = Store(tmp_path_factory.mktemp("priced"))
    spec = spec_from_dict({"name": "priced", "search": {"train.seed": {"choice": [0, 1, 2]},
                                                        "router.scope": {"choice": ["micro_batch", "global_batch"]}},
                           "sampler": {"type": "grid"}, "resources": {"cpu": 1, "gpu": 1},
                           "cost": PRICES})
    exp, parent = s.experiment("priced", spec_yaml=spec.to_yaml())
    purity = {"global_batch": [0.60, 0.64, 0.68], "micro_batch": [0.40, 0.42, 0.47]}
    for scope, values in purity.items():
        for seed, p in enumerate(values):
            tagged = scope == "global_batch"
            held = cost_metrics(1800, 1800) if tagged else cost_metrics(7200, 3600)
            s.run(exp, parent, f"p-{scope}-{seed}", naming.ROLE_TRIAL, trial_params("lbl", scope, 0, seed),
                  {**trial_metrics("lbl", p, seed, 0), **held},
                  tags={naming.TAG_STOPPED_EARLY: "false", **({naming.TAG_NODE_TYPE: A10G} if tagged else {})})
    return s


def test_report_states_the_study_total_and_the_cost_per_finding_in_money(priced_store, tmp_path):
    from study.results.report import write_report

    md = write_report("priced", out_dir=tmp_path, tracking_uri=priced_store.uri).read_text()
    line = next(ln for ln in section(md, "Verdict").splitlines() if ln.startswith("- **Cost**"))
    # CPU: 3 x 0.5 h + 3 x 2 h = 7.5; GPU: 3 x 0.5 h + 3 x 1 h = 4.5; money 3 x 0.503 + 3 x 1.30
    assert line.startswith("- **Cost**: 7.50 CPU-hours, 4.50 GPU-hours, 5.41 USD over 6 runs; "), line
    called = int(line.split("; ", 1)[1].split(" finding(s) shown")[0])
    assert called >= 1  # the scope comparison, at least
    assert f"and {money_text(5.409 / called, 'USD')} a finding." in line, line
    assert line.endswith("Priced by the spec's `cost` table: 3 run(s) at their node type's price and "
                         "3 run(s) per CPU- and GPU-hour.")


def shared_init_runs(init_by_arm) -> list[RunRecord]:
    """LBL at two scopes over three seeds, global above micro on every seed, 0.5 CPU-hours each;
    ``init_by_arm(scope, seed)`` is the step-0 purity each run's lift is taken from."""
    purity = {"global_batch": [0.60, 0.64, 0.68], "micro_batch": [0.40, 0.42, 0.47]}
    runs = []
    for scope, values in purity.items():
        for seed, p in enumerate(values):
            init = init_by_arm(scope, seed)
            runs.append(RunRecord(
                run_id=f"{scope}{seed}", name=f"{scope}-{seed}", role=naming.ROLE_TRIAL, status="FINISHED",
                parent_id=None, params={"router.method": "lbl", "router.scope": scope, "train.seed": str(seed)},
                metrics={naming.PURITY: p, naming.init_of(naming.PURITY): init,
                         naming.lift_of(naming.PURITY): p - init, **cost_metrics(1800, 0)}))
    return runs


def shown_on(items, metric):
    return [f for f in items if f.metric == metric and f.verdict == "holds"]


def test_purity_and_its_lift_over_a_shared_step0_router_count_as_one_finding():
    """Arms with the same step-0 router per seed (same init): ``purity_lift`` differences are
    ``purity`` differences, so the two findings are one comparison and pay the cost once."""
    from study.results.findings import findings
    from study.results.verdict import cost_line

    runs = shared_init_runs(lambda scope, seed: 0.30 + 0.02 * seed)
    items = findings(runs, None)
    assert len(shown_on(items, naming.PURITY)) == len(shown_on(items, naming.lift_of(naming.PURITY))) == 1
    line = cost_line(runs, items)
    # 6 runs x 0.5 CPU-hours over one comparison
    assert line.startswith("- **Cost**: 3.00 CPU-hours over 6 runs; 1 finding(s) shown (2 on their metrics"), line
    assert "`purity` and `purity_lift` of global_batch vs micro_batch (lbl)" in line
    assert line.endswith(", so 3.00 CPU-hours a finding."), line


def test_purity_and_its_lift_from_different_step0_routers_count_twice():
    from study.results.findings import findings
    from study.results.verdict import cost_line

    # the global-batch arm starts 0.05 purer on seed 0 only: the lift's differences differ
    runs = shared_init_runs(lambda scope, seed: 0.30 + (0.05 if (scope, seed) == ("global_batch", 0) else 0))
    items = findings(runs, None)
    assert shown_on(items, naming.PURITY) and shown_on(items, naming.lift_of(naming.PURITY))
    line = cost_line(runs, items)
    assert "; 2 finding(s) shown, so 1.50 CPU-hours a finding." in line, line


def test_report_without_a_price_table_states_hours_only(priced_store, tmp_path):
    from study.results.report import write_report

    exp, parent = priced_store.experiment("unpriced")
    for seed in range(2):
        priced_store.run(exp, parent, f"u{seed}", naming.ROLE_TRIAL, trial_params("lbl", "global_batch", 0, seed),
                         {**trial_metrics("lbl", 0.5, seed, 0), **cost_metrics(3600, 0)})
    md = write_report("unpriced", out_dir=tmp_path, tracking_uri=priced_store.uri).read_text()
    line = next(ln for ln in section(md, "Verdict").splitlines() if ln.startswith("- **Cost**"))
    assert line.startswith("- **Cost**: 2.00 CPU-hours over 2 runs;") and "USD" not in line


def test_best_show_cost_adds_hours_and_money_per_run(priced_store, capsys):
    assert main(["best", "priced", "--tracking-uri", priced_store.uri, "--by", "purity",
                 "--show-cost", "--format", "json"]) == 0
    rows = {r["trial"]: r for r in json.loads(capsys.readouterr().out)}
    assert len(rows) == 6
    assert rows["p-global_batch-0"]["cpu_h"] == pytest.approx(0.5)
    assert rows["p-global_batch-0"]["gpu_h"] == pytest.approx(0.5)
    assert rows["p-global_batch-0"]["cost"] == pytest.approx(0.503)
    assert rows["p-micro_batch-2"]["cpu_h"] == pytest.approx(2.0)
    assert rows["p-micro_batch-2"]["cost"] == pytest.approx(1.30)
    assert {r["currency"] for r in rows.values()} == {"USD"}

    assert main(["best", "priced", "--tracking-uri", priced_store.uri, "--by", "purity", "--show-cost"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 120, text
    header = lines[0].split()
    assert header[:9] == ["#", "purity", "trial", "method", "scope", "seed", "CPU-h", "GPU-h", "USD"], header
    best = lines[2].split()  # ranked by purity: global batch, seed 2 (0.68)
    assert best[2] == "p-global_batch-2" and best[6:9] == ["0.5", "0.5", "0.503"]

    # without the option: the same table as before, no cost fields
    assert main(["best", "priced", "--tracking-uri", priced_store.uri, "--by", "purity", "--format", "json"]) == 0
    assert "cpu_h" not in json.loads(capsys.readouterr().out)[0]


def test_best_show_cost_without_a_price_table_gives_hours_only(priced_store, capsys):
    exp, parent = priced_store.experiment("hours_only")
    priced_store.run(exp, parent, "h0", naming.ROLE_TRIAL, trial_params("lbl", "global_batch", 0, 0),
                     {**trial_metrics("lbl", 0.5, 0, 0), **cost_metrics(5400, 0)},
                     tags={naming.TAG_STOPPED_EARLY: "false"})
    assert main(["best", "hours_only", "--tracking-uri", priced_store.uri, "--show-cost", "--format", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["cpu_h"] == pytest.approx(1.5) and row["gpu_h"] == 0 and row["cost"] is None
    assert main(["best", "hours_only", "--tracking-uri", priced_store.uri, "--show-cost"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert "CPU-h" in header and "GPU-h" not in header and "USD" not in header
