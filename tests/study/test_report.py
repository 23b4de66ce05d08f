"""``moe-study report`` against a real MLflow sqlite store of nested runs (no mocks).

The store holds what ``study.run.tracking`` writes: a parent study run, a reference run and trial
runs as children, with the flat config as params, metric histories over steps, the
``stopped_early`` / ``error`` tags and ``count_table.parquet`` artifacts. Purity values are
chosen per cell so every mean, interval and verdict can be recomputed here with scipy.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from study import naming
from study.results.report import FIGURE_FILES, WINDOW_FILE, write_report
from study.results.stats import difference_ci, mean_ci, pareto_front
from trainables.count_table import write_count_table
from trainables.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DOMAINS = ["english", "german", "python"]
REF_PURITY, REF_LOSS = 1.0, 2.0
STEPS = 30
# (method, scope, capacity_factor, purity per seed)
CELLS = [
    ("lbl", "sequence", 0.0, [0.50, 0.52, 0.55]),
    ("lbl", "micro_batch", 0.0, [0.40, 0.42, 0.47]),
    ("lbl", "global_batch", 0.0, [0.60, 0.64, 0.68]),
    ("lbl", "global_batch", 1.0, [0.50, 0.52, 0.54]),
    ("eb", "micro_batch", 0.0, [0.56, 0.49, 0.61]),
    ("eb", "global_batch", 0.0, [0.55, 0.50, 0.60]),
    ("ec", "global_batch", 0.0, [0.70]),
]


def trial_name(method, scope, cap, seed):
    return f"trial-{method}-{scope}-cap{cap:g}-s{seed}"


def trial_metrics(method, purity, seed, cap):
    val_loss = 1.8 if method == "ec" else REF_LOSS + 0.5 * (1 - purity)
    return {
        "purity": purity, "reference_agreement": purity - 0.05, "load_entropy": 0.9 + 0.01 * seed,
        "max_vio": 1.0 - purity, "dead_expert_fraction": 0.05 * seed,
        "dropped_fraction": 0.02 if cap else 0.0, "val_loss": val_loss,
        "gap_loss": val_loss - REF_LOSS, "gap_purity": REF_PURITY - purity,
    }


def count_table(purity: float) -> np.ndarray:
    """Two layers of 6 experts x 3 domains, the diagonal share growing with purity."""
    n_ED = np.full((6, 3), 10.0)
    for e in range(6):
        n_ED[e, e % 3] += 200 * purity
    return np.stack([n_ED, n_ED[[3, 4, 5, 0, 1, 2]][:, [1, 2, 0]]])  # layer 1: other experts


class Store:
    def __init__(self, root: Path):
        from mlflow import MlflowClient

        self.root = root
        self.uri = "sqlite:///" + str(root / "mlflow.db")
        self.client = MlflowClient(self.uri)

    def experiment(self, name: str, spec_yaml: str | None = None) -> tuple[str, str]:
        exp = self.client.create_experiment(name, artifact_location=str(self.root / "artifacts" / name))
        parent = self.client.create_run(exp, run_name=f"study-{name}", tags={
            naming.TAG_ROLE: naming.ROLE_STUDY, naming.TAG_STUDY: name,
        }).info.run_id
        if spec_yaml is not None:
            path = self.root / name / naming.SPEC_ARTIFACT
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(spec_yaml)
            self.client.log_artifact(parent, str(path))
        self.client.set_terminated(parent)
        return exp, parent

    def run(self, exp, parent, name, role, params, metrics, *, tags=None, history=None,
            table=None, status="FINISHED", steps=STEPS):
        """A child run as the tracker logs it: params, a history per metric, final metrics."""
        from mlflow.entities import Metric, Param

        run_id = self.client.create_run(exp, run_name=name, tags={
            naming.TAG_PARENT_RUN: parent, naming.TAG_ROLE: role, naming.TAG_STUDY: "s",
            naming.TAG_METHOD: params.get("router.method", ""),
            naming.TAG_SCOPE: params.get("router.scope", ""), **(tags or {}),
        }).info.run_id
        logged = [Metric(k, v, 0, steps) for k, v in metrics.items()]
        for step, value in (history or []):
            logged.append(Metric("purity", value, 0, step))
        self.client.log_batch(run_id, metrics=logged,
                              params=[Param(k, str(v)) for k, v in params.items()])
        if table is not None:
            path = write_count_table(self.root / "tables" / run_id / naming.COUNT_TABLE_FILE, table, DOMAINS)
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status=status)
        return run_id


def trial_params(method, scope, cap, seed, steps=STEPS):
    params = {"router.method": method, "router.scope": scope, "router.capacity_factor": float(cap),
              "data.domains_per_micro_batch": 1, "train.seed": seed, "train.steps": steps}
    if method == "lbl":
        params["router.lbl_coef"] = 0.01
    return params


def history(purity):
    return [(10, 0.5 * purity), (20, 0.8 * purity), (STEPS, purity)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("mlflow"))
    exp, parent = s.experiment("paper_like")
    ref_metrics = {"purity": REF_PURITY, "val_loss": REF_LOSS, "nmi": 0.8,
                   "reference_agreement": 1.0, "load_entropy": 1.0, "max_vio": 0.0,
                   "dead_expert_fraction": 0.0}
    s.run(exp, parent, "reference-0", naming.ROLE_REFERENCE, {"router.method": "reference"},
          ref_metrics, table=count_table(1.0), tags={naming.TAG_STOPPED_EARLY: "false"})
    for method, scope, cap, purities in CELLS:
        for seed, p in enumerate(purities):
            s.run(exp, parent, trial_name(method, scope, cap, seed), naming.ROLE_TRIAL,
                  trial_params(method, scope, cap, seed), trial_metrics(method, p, seed, cap),
                  history=history(p), table=count_table(p), tags={naming.TAG_STOPPED_EARLY: "false"})
    # a repeat of an identical config (seed included): listed, but counted once in the stats
    s.run(exp, parent, "trial-eb-repeat", naming.ROLE_TRIAL, trial_params("eb", "micro_batch", 0.0, 0),
          trial_metrics("eb", 0.56, 0, 0.0), history=history(0.56), tags={naming.TAG_STOPPED_EARLY: "false"})
    # stopped early by ASHA with the best purity of all: must not be ranked by default
    s.run(exp, parent, "trial-stopped", naming.ROLE_TRIAL, trial_params("lbl", "global_batch", 0.0, 7),
          trial_metrics("lbl", 0.95, 7, 0.0), history=[(10, 0.95)], steps=10,
          tags={naming.TAG_STOPPED_EARLY: "true"})
    s.run(exp, parent, "trial-failed", naming.ROLE_TRIAL, trial_params("sh", "global_batch", 0.0, 0),
          {}, status="FAILED", tags={naming.TAG_ERROR: "Traceback ...\nRuntimeError: sinkhorn diverged"})
    s.client.create_experiment("empty_study")
    _reused_reference_study(s)
    _study_without_reference(s)
    return s


def _reused_reference_study(s: Store) -> None:
    """``second`` reused the reference run of ``first`` (same reference config hash)."""
    from study.spec import load_spec

    spec = load_spec(REPO / "search_spaces" / "smoke.yaml")
    first_exp, first_parent = s.experiment("first")
    # keyed as before ALWAYS_KEYED: the key a study from before the parent-run tag looked for
    s.run(first_exp, first_parent, "reference-first", naming.ROLE_REFERENCE,
          {"router.method": "reference"}, {"purity": 0.97, "val_loss": 2.1},
          tags={naming.TAG_CONFIG_HASH: spec.reference_keys_before_tags()[-1]})
    exp, parent = s.experiment("second", spec_yaml=spec.to_yaml())
    for seed, p in enumerate([0.4, 0.5]):
        s.run(exp, parent, f"t{seed}", naming.ROLE_TRIAL, trial_params("lbl", "global_batch", 0, seed),
              trial_metrics("lbl", p, seed, 0), history=history(p))


def _study_without_reference(s: Store) -> None:
    exp, parent = s.experiment("noref")
    for seed, p in enumerate([0.4, 0.6, 0.5]):
        s.run(exp, parent, f"t{seed}", naming.ROLE_TRIAL, trial_params("eb", "sequence", 0, seed),
              {"purity": p, "val_loss": 3.0})


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    path = write_report("paper_like", out_dir=out, tracking_uri=store.uri)
    return path, path.read_text()


def section(markdown: str, title: str) -> str:
    start = markdown.index(f"## {title}")
    end = markdown.find("\n## ", start + 1)
    return markdown[start:] if end < 0 else markdown[start:end]


def table_rows(text: str) -> list[list[str]]:
    """Body rows of the first Markdown table in ``text``, as stripped cells."""
    rows = [ln for ln in text.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in rows[2:]]


def full_length_trials():
    out = []
    for method, scope, cap, purities in CELLS:
        for seed, p in enumerate(purities):
            out.append((trial_name(method, scope, cap, seed), p))
    out.append(("trial-eb-repeat", 0.56))
    return out


# -- statistics -------------------------------------------------------------------------------
def test_mean_ci_matches_scipy_t_interval():
    values = [0.60, 0.64, 0.68, 0.61]
    est = mean_ci(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert est.n == 4 and est.mean == pytest.approx(np.mean(values))
    assert (est.low, est.high) == pytest.approx((low, high))
    single = mean_ci([0.3, float("nan")])
    assert single.n == 1 and single.half_width is None and single.mean == 0.3


def test_difference_ci_is_welch_interval():
    a, b = [0.60, 0.64, 0.68], [0.40, 0.42, 0.47, 0.45]
    est = difference_ci(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert est.mean == pytest.approx(np.mean(a) - np.mean(b))
    assert (est.low, est.high) == pytest.approx((ci.low, ci.high))
    assert difference_ci([0.5], [0.4, 0.3]).half_width is None


def test_pareto_front_keeps_only_non_dominated_points():
    points = [(0.1, 0.5), (0.2, 0.2), (0.3, 0.1), (0.25, 0.25), (0.1, 0.6), (float("nan"), 0.0)]
    # (0.25, 0.25) is beaten by (0.2, 0.2); (0.1, 0.6) by (0.1, 0.5); nan is never on the front
    assert pareto_front(points) == [0, 1, 2]


def grid_run(method, scope, seed, purity):
    from study.results.records import RunRecord

    return RunRecord(run_id=f"{method}{scope}{seed}", name=f"{method}-{scope}-{seed}",
                     role="trial", status="FINISHED", parent_id=None,
                     params={"router.method": method, "router.scope": scope, "train.seed": str(seed)},
                     metrics={"purity": purity})


def grid_runs(cell_means: dict[tuple[str, str], float]):
    """Three seeds of each (method, scope) cell: its mean, seeds 0.001 apart, plus noise of
    +-0.005 that no factor explains."""
    noise = iter(np.random.default_rng(3).uniform(-0.005, 0.005, size=3 * len(cell_means)))
    return [grid_run(m, s, seed, mean + 0.001 * seed + next(noise))
            for (m, s), mean in cell_means.items() for seed in range(3)]


def effects_finding(runs):
    from study.results.findings import findings

    return next(f for f in findings(runs, None) if f.topic == "scope effect vs method effect")


def test_effect_size_verdict_when_scope_clearly_dominates():
    # scopes differ by 0.3 within each method, methods not at all: no interaction
    runs = grid_runs({(m, s): base for m in ("lbl", "eb")
                      for s, base in (("micro_batch", 0.3), ("global_batch", 0.6))})
    line = effects_finding(runs)
    assert line.verdict == "scope matters more than method", line
    assert "2 methods x 2 scopes x 3 seeds" in line.text
    # the scope's F test: the same numbers by a direct least-squares fit
    from study.results.paired_stats import holm, two_way_effects

    result = two_way_effects({(r.method, r.scope, r.seed): r.metric("purity") for r in runs})
    assert f"F(1, {result.df_error}) = {result.scope.f:.2f}" in line.text
    assert result.scope.p_value < 0.001 < result.method.p_value
    # the interaction is tested with the main effects, in the same Holm family
    raw = (result.scope.p_value, result.method.p_value, result.interaction.p_value)
    assert line.p_values == pytest.approx(raw)
    assert line.p_adjusted == pytest.approx(tuple(holm(list(raw))))
    assert line.p_adjusted[2] >= 0.05
    assert f"method x scope {line.p_adjusted[2]:.3g}" in line.markdown()


def test_effect_size_verdict_says_when_the_interaction_is_shown():
    """Scope adds 0.4 for lbl and nothing for eb: on average scope matters (0.2) and method
    not (both average 0.5), but the scope effect is all in one method."""
    runs = grid_runs({("lbl", "micro_batch"): 0.3, ("lbl", "global_batch"): 0.7,
                      ("eb", "micro_batch"): 0.5, ("eb", "global_batch"): 0.5})
    line = effects_finding(runs)
    from study.results.paired_stats import two_way_effects

    result = two_way_effects({(r.method, r.scope, r.seed): r.metric("purity") for r in runs})
    assert line.p_adjusted[0] < 0.05 <= line.p_adjusted[1] and line.p_adjusted[2] < 0.05
    assert line.verdict == (
        f"scope matters more than method; the interaction is shown too (partial eta² "
        f"{result.interaction.partial_eta_sq:.2f}): the scope effect differs by method, read the cells")
    assert "method x scope: spread" in line.text
    # the tally keeps the interaction in its short verdict
    from study.results.report import verdict_tally

    assert verdict_tally([line]) == {"scope effect vs method effect, purity":
                                     {"scope matters more than method, interaction shown": 1}}


def test_effects_verdict_adds_a_shown_interaction_to_every_main_effect_verdict():
    from study.results.findings import effects_verdict

    clause = "the interaction is shown{} (partial eta² 0.96): the scope effect differs by method, read the cells"
    main = dict(eta_scope=0.96, eta_method=0.98, eta_interaction=0.96)
    assert effects_verdict(p_scope=0.001, p_method=0.002, p_interaction=0.01, **main) == (
        "both shown (partial eta² scope 0.96, method 0.98); which matters more is not tested; "
        + clause.format(" too"))
    assert effects_verdict(p_scope=0.3, p_method=0.002, p_interaction=0.01, **main) == (
        "method matters more than scope; " + clause.format(" too"))
    assert effects_verdict(p_scope=0.3, p_method=0.2, p_interaction=0.01, **main) == (
        "not shown (neither main effect shown); " + clause.format(""))
    # an interaction not shown, or not tested, changes nothing
    for p_interaction in (0.05, 0.6, None):
        assert effects_verdict(p_scope=0.001, p_method=0.2, p_interaction=p_interaction,
                               **main) == "scope matters more than method"
    assert effects_verdict(p_scope=None, p_method=None, p_interaction=None).startswith(
        "not shown (no residual variance")


# -- the report -------------------------------------------------------------------------------
def test_header_counts_runs_and_shows_the_reference(report):
    _, md = report
    assert md.startswith("# Routing study report: paper_like")
    assert "studies (parent runs): 1" in md
    assert "trials: 22: 20 finished the full `train.steps`, 1 stopped early by the scheduler, 1 failed" in md
    header = md[: md.index("## Leaderboard")]
    ref_row = table_rows(header)[0]
    assert ref_row[:2] == ["2.000", "1.000"]  # val_loss, purity of the reference run


def test_leaderboard_ranks_full_length_trials_by_gap_purity_under_the_reference(report):
    _, md = report
    board = section(md, "Leaderboard")
    rows = table_rows(board)
    assert rows[0][0] == "ref" and "reference, upper bound" in rows[0][1]
    head = [c.strip() for c in board.splitlines()[4].strip("|").split("|")]
    assert [rows[0][head.index(g)] for g in ("gap_loss", "gap_purity")] == ["0.000", "0.000"]  # its own gaps
    expected = [name for name, p in sorted(full_length_trials(), key=lambda t: (REF_PURITY - t[1], t[0]))]
    assert [r[1] for r in rows[1:]] == expected[:20]
    assert "trial-stopped" not in board and "trial-failed" not in board
    assert "Only trials that ran the full `train.steps`" in board and "left out: 1 stopped early" in board
    top = rows[1]
    assert top[1] == "trial-ec-global_batch-cap0-s0"
    header = [c.strip() for c in board.splitlines()[4].strip("|").split("|")]
    assert top[header.index("val_loss")].endswith("†")  # ec's loss is flagged
    assert "leaks future tokens" in board
    cap_row = next(r for r in rows if r[1] == trial_name("lbl", "global_batch", 1.0, 2))
    assert cap_row[header.index("capacity")] == "1"
    assert cap_row[header.index("purity")] == "0.540"
    assert cap_row[header.index("dropped_fraction")] == "0.020"


def test_method_scope_table_means_and_intervals_match_scipy(report):
    _, md = report
    table = section(md, "Method x scope")
    header = [c.strip() for c in table.splitlines()[4].strip("|").split("|")]
    rows = {(r[0], r[1], r[2]): r for r in table_rows(table)}
    assert len(rows) == len(CELLS)
    for method, scope, cap, purities in CELLS:
        label = "dropless" if cap == 0 else f"{cap:g}"
        row = rows[(method + (" †" if method == "ec" else ""), scope, label)]
        assert row[header.index("n")] == str(len(purities))
        gap_loss = [trial_metrics(method, p, 0, cap)["gap_loss"] for p in purities]
        for metric, values in (("purity", purities), ("gap_loss", gap_loss)):
            cell = row[header.index(metric)]
            if len(values) == 1:
                assert cell.startswith(f"{values[0]:.3f} (n=1)")
                continue
            half = stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)
            assert cell == f"{np.mean(values):.3f} ± {half:.3f}"
    assert rows[("ec †", "global_batch", "dropless")][header.index("gap_loss")].endswith("†")
    assert "trial-eb-repeat (= trial-eb-micro_batch-cap0-s0)" in table
    assert "`router.lbl_coef`" not in table  # cells pool nothing but seeds


def finding(md: str, topic: str, context: str) -> str:
    lines = [ln for ln in section(md, "Findings").splitlines()
             if ln.startswith(f"- **{topic}** ({context})")]
    assert len(lines) == 1, (topic, context, section(md, "Findings"))
    return lines[0]


def verdict(line: str) -> str:
    return re.search(r": \*\*([^*]+)\*\*$", line).group(1)


def purities(method, scope, cap=0.0):
    return next(p for m, s, c, p in CELLS if (m, s, c) == (method, scope, cap))


def paired(a, b):
    """scipy's paired t-test of a - b over seeds: (interval, p)."""
    res = stats.ttest_rel(a, b)
    return res.confidence_interval(0.95), res.pvalue


def test_findings_verdicts_follow_the_numbers(report):
    _, md = report
    # lbl: global clearly above micro, on every seed
    line = finding(md, "global_batch vs micro_batch", "lbl, capacity dropless")
    ci, p = paired(purities("lbl", "global_batch"), purities("lbl", "micro_batch"))
    assert ci.low > 0 and verdict(line) == "holds"
    assert f"95% CI [{ci.low:.3f}, {ci.high:.3f}] (paired over 3 seeds, 3 of 3 agree in sign)" in line
    diff = np.mean(purities("lbl", "global_batch")) - np.mean(purities("lbl", "micro_batch"))
    assert f"difference {diff:.3f}" in line
    # Holm over the report's 7 p-values (4 comparisons, the two-way's scope, method and interaction)
    adjusted = float(re.search(r"Holm-adjusted p = ([0-9.e-]+)", line).group(1))
    assert p < adjusted <= min(1.0, 7 * p) * 1.001
    # eb: the two scopes overlap, nothing shown
    line = finding(md, "global_batch vs micro_batch", "eb, capacity dropless")
    ci, _ = paired(purities("eb", "global_batch"), purities("eb", "micro_batch"))
    assert ci.low < 0 < ci.high and verdict(line) == "not shown"
    # lbl: sequence beats micro_batch here, so the wider-scope claim is reversed
    line = finding(md, "micro_batch vs sequence", "lbl, capacity dropless")
    assert verdict(line).startswith("does not hold")
    # capacity 1 lowers purity against dropless lbl at global scope
    line = finding(md, "capacity 1 vs dropless", "lbl, global_batch")
    assert verdict(line) == "lower with capacity 1"
    # a method with one scope only gives no scope finding
    assert "(ec" not in section(md, "Findings").split("scope effect")[0]
    # the tally counts each claim's comparisons by verdict: lbl holds, eb not shown
    tally = {r[0]: r[1] for r in table_rows(section(md, "Findings"))}
    assert tally["global_batch vs micro_batch, purity"] == "holds 1, not shown 1"
    assert tally["micro_batch vs sequence, purity"] == "does not hold 1"
    assert "Holm-adjusted within each metric (one family per metric, `purity` 7 p-values)" in md
    assert "margin ±0.01" in md


def test_effect_size_and_reference_findings(report):
    _, md = report
    from study.results.paired_stats import two_way_effects

    # the largest complete grid: lbl and eb at micro_batch and global_batch, dropless, 3 seeds
    grid = {(m, s, str(seed)): p for m, s, c, ps in CELLS if c == 0.0 and m in ("lbl", "eb")
            and s in ("micro_batch", "global_batch") for seed, p in enumerate(ps)}
    result = two_way_effects(grid)
    line = next(ln for ln in section(md, "Findings").splitlines()
                if ln.startswith("- **scope effect vs method effect"))
    assert "2 methods x 2 scopes x 3 seeds" in line
    assert f"scope: spread {result.scope.spread:.3f}, F(1, {result.df_error}) = {result.scope.f:.2f}" in line
    assert f"partial eta² {result.method.partial_eta_sq:.2f}" in line
    line_verdict = verdict(line)
    assert line_verdict.startswith(("scope matters more than method", "method matters more than scope",
                                    "both shown", "not shown"))
    # lbl gains 0.21 from the wider scope, eb nothing: the interaction is tested and shown
    assert f"method x scope: spread {result.interaction.spread:.3f}, F(1, {result.df_error})" in line
    interaction_p = float(re.search(r"Holm-adjusted p: .*method x scope ([0-9.e-]+)", line).group(1))
    assert result.interaction.p_value <= interaction_p < 0.05
    assert f"the interaction is shown too (partial eta² {result.interaction.partial_eta_sq:.2f})" in line_verdict
    line = next(ln for ln in section(md, "Findings").splitlines() if ln.startswith("- **reference router on top"))
    assert verdict(line) == "yes" and "best trial trial-ec-global_batch-cap0-s0" in line


def test_equivalence_is_claimed_only_through_tost(store, tmp_path):
    """A capacity whose purity is within ±0.002 of dropless on every seed: "equivalent within
    ±0.01"; a noisy one with a similar mean difference: "not shown"."""
    exp, parent = store.experiment("equivalence")
    arms = {0.0: [0.500, 0.520, 0.540, 0.530], 1.0: [0.501, 0.519, 0.542, 0.530],
            2.0: [0.40, 0.64, 0.45, 0.63]}
    for cap, values in arms.items():
        for seed, p in enumerate(values):
            store.run(exp, parent, f"eq-{cap}-{seed}", naming.ROLE_TRIAL, trial_params("lbl", "global_batch", cap, seed),
                      trial_metrics("lbl", p, seed, cap))
    md = write_report("equivalence", out_dir=tmp_path, tracking_uri=store.uri).read_text()
    assert verdict(finding(md, "capacity 1 vs dropless", "lbl, global_batch")).startswith("equivalent within ±0.01")
    assert verdict(finding(md, "capacity 2 vs dropless", "lbl, global_batch")) == "not shown"


def test_figures_are_written_and_linked(report):
    from matplotlib.image import imread

    path, md = report
    for name in (*FIGURE_FILES, "heatmaps_layer0.png", "heatmaps_layer1.png"):
        if name == WINDOW_FILE:
            continue  # not a window sweep
        file = path.parent / name
        assert file.stat().st_size > 1000, name
        image = imread(file)
        assert image.ndim == 3 and min(image.shape[:2]) > 100, name
        assert f"![{name}]({name})" in md
    assert not (path.parent / "heatmaps_layer2.png").exists()  # the model has two MoE layers
    assert "No count table" not in md  # reference, best and worst all had their artifact
    assert not (path.parent / WINDOW_FILE).exists() and WINDOW_FILE not in md


WINDOW_PURITY = {1: [0.30, 0.32, 0.31], 4: [0.35, 0.36, 0.40], 16: [0.45, 0.47, 0.50]}


def test_balance_window_sweep_gets_cells_a_curve_and_a_finding(store, tmp_path):
    exp, parent = store.experiment("window_sweep")
    for window, purities in WINDOW_PURITY.items():
        for seed, p in enumerate(purities):
            params = {**trial_params("lbl", "window", 0, seed), "router.balance_window": window,
                      "train.micro_batch_size": 4, "train.grad_accum": 4}
            store.run(exp, parent, f"w{window}-s{seed}", naming.ROLE_TRIAL, params,
                      trial_metrics("lbl", p, seed, 0), history=history(p))
    path = write_report("window_sweep", out_dir=tmp_path, tracking_uri=store.uri)
    md = path.read_text()
    table = section(md, "Method x scope")
    header = [c.strip() for c in table.splitlines()[4].strip("|").split("|")]
    rows = table_rows(table)
    assert [r[1] for r in rows] == ["window 1", "window 4", "window 16"]  # numeric order
    for row, purities in zip(rows, WINDOW_PURITY.values()):
        assert row[header.index("purity")].startswith(f"{np.mean(purities):.3f} ± ")
    assert (tmp_path / WINDOW_FILE).stat().st_size > 1000 and f"![{WINDOW_FILE}]" in md
    finding = [ln for ln in section(md, "Findings").splitlines() if "window 16 vs window 1" in ln]
    diff = difference_ci(WINDOW_PURITY[16], WINDOW_PURITY[1])
    assert len(finding) == 1 and "holds" in finding[0] and f"{diff.mean:.3f}" in finding[0]
    assert "paired over 3 seeds" in finding[0]


def test_failed_trials_are_listed_with_their_error(report):
    _, md = report
    assert "`trial-failed` (sh, global_batch): RuntimeError: sinkhorn diverged" in section(md, "Failed trials")


def test_stopped_early_trials_are_ranked_when_asked(store, tmp_path):
    path = write_report("paper_like", out_dir=tmp_path, tracking_uri=store.uri,
                        include_stopped_early=True, top=3)
    rows = table_rows(section(path.read_text(), "Leaderboard"))
    assert [r[1] for r in rows[1:]] == ["trial-stopped", "trial-ec-global_batch-cap0-s0",
                                        trial_name("lbl", "global_batch", 0.0, 2)]


def test_unknown_or_empty_experiment_is_a_config_error(store, tmp_path):
    with pytest.raises(ConfigError, match="paper_lik'.*did you mean 'paper_like'"):
        write_report("paper_lik", out_dir=tmp_path, tracking_uri=store.uri)
    with pytest.raises(ConfigError, match="'empty_study' has no finished trial runs"):
        write_report("empty_study", out_dir=tmp_path, tracking_uri=store.uri)


def test_reused_reference_is_found_in_another_experiment(store, tmp_path):
    """A study from before the parent-run tag that reused a reference run finds it by the key
    its spec was given then."""
    md = write_report("second", out_dir=tmp_path, tracking_uri=store.uri).read_text()
    assert "`reference-first`" in md and "reused from experiment 'first'" in md
    assert "**reference-first (reference, upper bound)**" in md


def test_reused_reference_is_found_by_the_parent_runs_tag(store, tmp_path):
    """A study run by this version tags its parent with the reference key: the report finds the
    reused reference from the tag alone (no spec artifact to recompute it from)."""
    first_exp, first_parent = store.experiment("tagged_first")
    store.run(first_exp, first_parent, "reference-tagged", naming.ROLE_REFERENCE,
              {"router.method": "reference"}, {"purity": 0.95, "val_loss": 2.2},
              tags={naming.TAG_CONFIG_HASH: "feedfacefeedface"})
    exp, parent = store.experiment("tagged_second")
    store.client.set_tag(parent, naming.TAG_REFERENCE_KEY, "feedfacefeedface")
    for seed, p in enumerate([0.4, 0.5]):
        store.run(exp, parent, f"t{seed}", naming.ROLE_TRIAL, trial_params("lbl", "global_batch", 0, seed),
                  trial_metrics("lbl", p, seed, 0), history=history(p))
    md = write_report("tagged_second", out_dir=tmp_path, tracking_uri=store.uri).read_text()
    assert "`reference-tagged`" in md and "reused from experiment 'tagged_first'" in md


def test_leaderboard_ranks_by_the_studys_objective(store, tmp_path):
    """A study spec whose objective the trials report: the leaderboard ranks by it, in its
    direction, not by gap_purity."""
    from study.spec import spec_from_dict

    spec = spec_from_dict({"name": "by_objective", "search": {"train.seed": {"choice": [0, 1, 2]}},
                           "objective": {"metric": "cmi_lift"}, "sampler": {"type": "grid"}})
    exp, parent = store.experiment("by_objective", spec_yaml=spec.to_yaml())
    for seed, (p, lift) in enumerate([(0.9, 0.01), (0.5, 0.03), (0.7, 0.02)]):
        store.run(exp, parent, f"o{seed}", naming.ROLE_TRIAL, trial_params("lbl", "global_batch", 0, seed),
                  {**trial_metrics("lbl", p, seed, 0), "cmi_lift": lift})
    board = section(write_report("by_objective", out_dir=tmp_path, tracking_uri=store.uri).read_text(),
                    "Leaderboard")
    assert "by `cmi_lift` (descending) (the study's objective)" in board
    assert [r[1] for r in table_rows(board)] == ["o1", "o2", "o0"]


def test_compare_also_ranks_by_the_studys_objective(store, tmp_path):
    """--compare ranks the shared cells by purity and again by the study's objective."""
    from study.spec import spec_from_dict

    spec = spec_from_dict({"name": "obj_a", "search": {"train.seed": {"choice": [0, 1]}},
                           "objective": {"metric": "cmi_lift"}, "sampler": {"type": "grid"}})
    lifts = {"obj_a": {"global_batch": 0.05, "micro_batch": 0.01, "sequence": 0.0},
             "obj_b": {"global_batch": 0.01, "micro_batch": 0.05, "sequence": 0.0}}
    for name, by_scope in lifts.items():
        exp, parent = store.experiment(name, spec_yaml=spec.to_yaml())
        for scope, lift in by_scope.items():
            for seed in range(2):
                store.run(exp, parent, f"{name}-{scope}-{seed}", naming.ROLE_TRIAL,
                          trial_params("lbl", scope, 0.0, seed),
                          {**trial_metrics("lbl", 0.5, seed, 0.0), "cmi_lift": lift + 0.001 * seed})
    md = write_report("obj_a", out_dir=tmp_path, tracking_uri=store.uri, compare=["obj_b"]).read_text()
    on_objective = section(md, "Against `obj_b`, on `cmi_lift`")
    rows = {r[1]: r for r in table_rows(on_objective)}
    assert rows["global_batch"][7:] == ["1", "2"] and rows["micro_batch"][7:] == ["2", "1"]
    assert "Kendall's tau between the two rankings of these 3 cells: **0.33**" in on_objective


def test_without_reference_trials_rank_by_purity(store, tmp_path):
    path = write_report("noref", out_dir=tmp_path, tracking_uri=store.uri)
    md = path.read_text()
    assert "reference run: none found" in md
    board = section(md, "Leaderboard")
    assert "by `purity` (descending)" in board
    assert [r[1] for r in table_rows(board)] == ["t1", "t2", "t0"]
    assert "pareto.png not drawn" in md and not (path.parent / "pareto.png").exists()
    assert (path.parent / "cell_bars.png").stat().st_size > 1000


def test_report_data_loads_without_ray():
    """Reports read the tracker's names from study.naming, so building one never imports Ray
    (seconds per report); study.run.tracking, which writes them, does."""
    code = "import sys, study.results.records; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_cli_report_subprocess(store, tmp_path):
    out = tmp_path / "cli-report"
    proc = subprocess.run(
        [sys.executable, "-m", "study.cli", "report", "noref", "--tracking-uri", store.uri,
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.md").read_text().startswith("# Routing study report: noref")
    assert f"report written to {out / 'report.md'}" in proc.stdout


def test_cli_unknown_experiment_exits_2(store, capsys):
    from study.cli import main

    assert main(["report", "nope", "--tracking-uri", store.uri]) == 2
    assert "'nope' not found" in capsys.readouterr().err


def test_compare_section_ranks_shared_cells_in_both_studies(store, tmp_path):
    # a "bigger model" study: three of paper_like's dropless cells, lbl global/micro keep their
    # order, eb micro moves to the top
    bigger = {("lbl", "global_batch"): [0.70, 0.72, 0.74], ("lbl", "micro_batch"): [0.45, 0.47, 0.49],
              ("eb", "micro_batch"): [0.80, 0.82, 0.84]}
    exp, parent = store.experiment("paper_like_bigger")
    store.run(exp, parent, "reference-big", naming.ROLE_REFERENCE, {"router.method": "reference"},
              {"purity": 0.99, "val_loss": 1.9})
    for (method, scope), purities in bigger.items():
        for seed, p in enumerate(purities):
            store.run(exp, parent, f"big-{method}-{scope}-{seed}", naming.ROLE_TRIAL,
                      trial_params(method, scope, 0.0, seed), trial_metrics(method, p, seed, 0.0))
    path = write_report("paper_like", out_dir=tmp_path, tracking_uri=store.uri, compare=["paper_like_bigger"])
    text = section(path.read_text(), "Against `paper_like_bigger`")
    here = {(m, s): np.mean(p) for m, s, c, p in CELLS if c == 0.0 and (m, s) in bigger}
    rank_here = {k: i + 1 for i, k in enumerate(sorted(here, key=lambda k: -here[k]))}
    rank_there = {k: i + 1 for i, k in enumerate(sorted(bigger, key=lambda k: -np.mean(bigger[k])))}
    tau = stats.kendalltau([rank_here[k] for k in here], [rank_there[k] for k in here]).statistic
    assert f"**{tau:.2f}**" in text and "3 cells" in text
    assert "`paper_like` 1.000, `paper_like_bigger` 0.990" in text
    rows = {(r[0], r[1]): r for r in table_rows(text)}
    assert set(rows) == set(bigger)
    lbl_cells = [p for m, s, c, p in CELLS if (m, s, c) == ("lbl", "global_batch", 0.0)][0]
    diff = difference_ci(lbl_cells, bigger[("lbl", "global_batch")])
    assert rows[("lbl", "global_batch")][6] == f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]"
    assert rows[("eb", "micro_batch")][7:] == [str(rank_here[("eb", "micro_batch")]), "1"]
    with pytest.raises(ConfigError):
        write_report("paper_like", out_dir=tmp_path / "x", tracking_uri=store.uri, compare=["no_such_study"])


def test_report_names_the_data_mix_and_warns_when_runs_differ(store, tmp_path):
    exp, parent = store.experiment("mixed_text")
    store.run(exp, parent, "reference-m", naming.ROLE_REFERENCE, {"router.method": "reference"},
              {"purity": 0.99, "val_loss": 1.9}, tags={naming.TAG_MIX_HASH: "aaaa000000000000"})
    for seed, mix in enumerate(["aaaa000000000000", "aaaa000000000000", "bbbb000000000000"]):
        store.run(exp, parent, f"m-{seed}", naming.ROLE_TRIAL, trial_params("lbl", "global_batch", 0.0, seed),
                  trial_metrics("lbl", 0.5, seed, 0.0), tags={naming.TAG_MIX_HASH: mix})
    text = write_report("mixed_text", out_dir=tmp_path / "mixed", tracking_uri=store.uri).read_text()
    assert "trained on 2 different data mixes** (`aaaa000000000000`, `bbbb000000000000`)" in text
    # one mix: named; none recorded (the module's store): said so
    exp, parent = store.experiment("one_text")
    for seed in range(2):
        store.run(exp, parent, f"o-{seed}", naming.ROLE_TRIAL, trial_params("lbl", "global_batch", 0.0, seed),
                  trial_metrics("lbl", 0.5, seed, 0.0), tags={naming.TAG_MIX_HASH: "cccc000000000000"})
    text = write_report("one_text", out_dir=tmp_path / "one", tracking_uri=store.uri).read_text()
    assert "- data mix: content hash `cccc000000000000`" in text and "warning" not in text.lower()
    text = write_report("paper_like", out_dir=tmp_path / "pl", tracking_uri=store.uri).read_text()
    assert "- data mix: not recorded" in text


def test_compare_warns_when_the_studies_trained_on_different_text(store, tmp_path):
    cells = [("lbl", "global_batch"), ("lbl", "micro_batch")]
    for name, mix in (("text_a", "aaaa111111111111"), ("text_b", "bbbb111111111111"),
                      ("text_a_again", "aaaa111111111111")):
        exp, parent = store.experiment(name)
        for method, scope in cells:
            for seed in range(2):
                store.run(exp, parent, f"{name}-{scope}-{seed}", naming.ROLE_TRIAL,
                          trial_params(method, scope, 0.0, seed),
                          trial_metrics(method, 0.5 + 0.1 * seed, seed, 0.0),
                          tags={naming.TAG_MIX_HASH: mix})
    text = write_report("text_a", out_dir=tmp_path / "a", tracking_uri=store.uri,
                        compare=["text_b", "text_a_again"]).read_text()
    against_b = section(text, "Against `text_b`")
    assert ("**Warning: the two studies trained on different text** (data mix content hashes "
            "`aaaa111111111111` here, `bbbb111111111111` in `text_b`)") in against_b
    assert "different text" not in section(text, "Against `text_a_again`")


def test_lift_verdicts_per_layer_table_and_lift_findings(store, tmp_path):
    """Cells whose purity fell below the step-0 router's are marked as erasing structure, cells
    whose CMI rose as specialised; per-layer values sit next to their mean; findings are made on
    the lifts and CMI too."""
    exp, parent = store.experiment("lifts")
    lifts = {"micro_batch": ([-0.05, -0.06, -0.04], [0.000, 0.010, -0.010]),
             "global_batch": ([-0.01, 0.00, 0.01], [0.020, 0.030, 0.025])}
    for scope, (purity_lifts, cmi_lifts) in lifts.items():
        for seed, (pl, cl) in enumerate(zip(purity_lifts, cmi_lifts)):
            m = trial_metrics("lbl", 0.3 + pl, seed, 0.0)
            m.update({"purity_init": 0.3, "purity_lift": pl, "cmi": 0.08 + cl, "cmi_lift": cl,
                      "purity/layer0": 0.35 + pl, "purity/layer1": 0.25 + pl,
                      "purity_lift/layer0": pl + 0.01, "purity_lift/layer1": pl - 0.01,
                      "cmi/layer0": 0.05, "cmi/layer1": 0.11 + 2 * cl,
                      "cmi_lift/layer0": 0.0, "cmi_lift/layer1": 2 * cl})
            store.run(exp, parent, f"l-{scope}-{seed}", naming.ROLE_TRIAL,
                      trial_params("lbl", "global_batch" if scope == "global_batch" else "micro_batch", 0.0, seed), m)
    md = write_report("lifts", out_dir=tmp_path, tracking_uri=store.uri).read_text()
    table = section(md, "Method x scope")
    header = [c.strip() for c in table.splitlines()[4].strip("|").split("|")]
    rows = {r[1]: r for r in table_rows(table)}
    assert rows["micro_batch"][header.index("training did")] == "balancing erased structure"
    assert rows["global_batch"][header.index("training did")] == "specialised"
    # no objective in this study: the means over layers decide
    assert "*training did* read `purity_lift` and `cmi_lift` (means over layers)." in table
    half = stats.t.ppf(0.975, 2) * stats.sem(lifts["micro_batch"][0])
    assert rows["micro_batch"][header.index("purity_lift")] == f"{np.mean(lifts['micro_batch'][0]):.3f} ± {half:.3f}"
    layers = section(md, "Per layer")
    lheader = [c.strip() for c in layers.splitlines()[4].strip("|").split("|")]
    lrows = {(r[1], r[4]): r for r in table_rows(layers)}
    assert set(lrows) == {(s, layer) for s in lifts for layer in ("0", "1", "mean")}
    assert lrows[("global_batch", "1")][lheader.index("cmi_lift")].startswith(
        f"{np.mean([2 * c for c in lifts['global_batch'][1]]):.3f} ± ")
    assert lrows[("global_batch", "0")][lheader.index("cmi")] == "0.050 ± 0.000"
    # findings on each metric: global above micro in purity_lift and in cmi_lift
    assert finding_line(md, "global_batch vs micro_batch", "purity_lift")
    cmi_line = finding_line(md, "global_batch vs micro_batch", "cmi_lift")
    diffs = np.subtract(lifts["global_batch"][1], lifts["micro_batch"][1])
    assert f"difference {diffs.mean():.3f}" in cmi_line and "3 of 3 agree in sign" in cmi_line
    # and on the last layer's cmi_lift, where the learned routing shows (twice the mean here)
    last_line = finding_line(md, "global_batch vs micro_batch", "cmi_lift/layer1")
    assert f"difference {2 * diffs.mean():.3f}" in last_line
    assert not [ln for ln in section(md, "Findings").splitlines() if "cmi_lift/layer0" in ln]
    # one Holm family per metric: each metric's comparisons are adjusted among themselves
    families = re.search(r"one family per metric, (.*?) p-values", md).group(1)
    assert families.split(", ")[0].startswith("`purity` ") and "`cmi_lift/layer1` " in families
    # the verdict matrix: one row per comparison, one column per metric
    matrix = section(md, "Findings")
    header_line = next(ln for ln in matrix.splitlines() if ln.startswith("| claim | setting"))
    columns = [c.strip() for c in header_line.strip("|").split("|")]
    assert columns[2:] == ["`purity`", "`purity_lift`", "`cmi`", "`cmi_lift`", "`cmi_lift/layer1`"]
    row = next(ln for ln in matrix.splitlines() if ln.startswith("| global_batch vs micro_batch |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[columns.index("`cmi_lift/layer1`")] == last_line.split(": **")[-1].rstrip("*").split(" (")[0] + \
        f" ({2 * diffs.mean():+.3f})"


def objective_lift_runs():
    """LBL at two scopes whose last layer learned (``cmi_lift/layer1`` above 0 at global batch)
    while the mean over layers does not show it (``cmi_lift``'s interval reaches 0), as in the
    quick study."""
    from study.results.records import RunRecord

    lifts = {"global_batch": ([0.05, -0.02, 0.04], [0.08, 0.07, 0.09]),
             "micro_batch": ([0.00, 0.01, -0.01], [0.02, -0.01, 0.00])}
    return [RunRecord(run_id=f"{scope}{seed}", name=f"{scope}-{seed}", role="trial", status="FINISHED",
                      parent_id=None, params={"router.method": "lbl", "router.scope": scope, "train.seed": str(seed)},
                      metrics={"purity": 0.3, "purity_lift": 0.01 * (seed - 1), "cmi_lift": mean,
                               "cmi_lift/layer1": last})
            for scope, (means, lasts) in lifts.items() for seed, (mean, last) in enumerate(zip(means, lasts))]


def training_did(table: str) -> dict[str, str]:
    header = [c.strip() for c in table.splitlines()[4].strip("|").split("|")]
    return {r[1]: r[header.index("training did")] for r in table_rows(table)}


def test_training_did_reads_a_lift_objective_as_the_verdict_does():
    from study.results.report import cell_table_markdown
    from study.results.verdict import baseline_line, ranked_cells

    runs, objective = objective_lift_runs(), "cmi_lift/layer1"
    table = cell_table_markdown(runs, objective=objective)
    assert training_did(table) == {"global_batch": "specialised", "micro_batch": "not shown"}
    header = [c.strip() for c in table.splitlines()[4].strip("|").split("|")]
    half = stats.t.ppf(0.975, 2) * stats.sem([0.08, 0.07, 0.09])
    assert {r[1]: r[header.index(objective)] for r in table_rows(table)}["global_batch"] == f"0.080 ± {half:.3f}"
    assert ("*training did* read `purity_lift` and `cmi_lift/layer1` (the study's objective, which "
            "the Verdict judges too).") in table
    assert "**specialised** when the interval of `cmi_lift/layer1` lies above 0" in table
    # the Verdict says the same of the best cell
    line = baseline_line(ranked_cells(runs, objective, False), objective, None)
    assert "`lbl` at `global_batch`: its interval lies above 0" in line
    # an objective that is not a lift, or none: the mean over layers, which does not show it
    for other in ("purity", "gap_purity", ""):
        table = cell_table_markdown(runs, objective=other)
        assert training_did(table) == {"global_batch": "not shown", "micro_batch": "not shown"}
        assert "*training did* read `purity_lift` and `cmi_lift` (means over layers)." in table
        assert f"| {objective} |" not in table
    # a purity lift objective: one metric for both labels
    table = cell_table_markdown(runs, objective="purity_lift")
    assert "*training did* read `purity_lift` (the study's objective" in table
    assert "(training added to the untrained router's `purity`)" in table


def finding_line(md: str, topic: str, metric: str) -> str:
    lines = [ln for ln in section(md, "Findings").splitlines()
             if ln.startswith(f"- **{topic}**") and f"`{metric}`:" in ln]
    assert len(lines) == 1, (topic, metric)
    return lines[0]


def test_report_says_which_step_composition_and_domains_a_study_used(store, tmp_path):
    exp, parent = store.experiment("composed")
    for seed in range(2):
        params = {**trial_params("lbl", "global_batch", 0.0, seed),
                  "data.step_composition": "domain_complete",
                  "data.domains": "['english', 'german', 'spanish', 'python', 'c', 'json']"}
        store.run(exp, parent, f"c-{seed}", naming.ROLE_TRIAL, params, trial_metrics("lbl", 0.5, seed, 0.0))
    md = write_report("composed", out_dir=tmp_path, tracking_uri=store.uri).read_text()
    assert "- step composition (`data.step_composition`): `domain_complete`" in md
    assert "- domains (`data.domains`): ['english', 'german', 'spanish', 'python', 'c', 'json']" in md
    old = write_report("paper_like", out_dir=tmp_path / "old", tracking_uri=store.uri).read_text()
    assert "`independent (not logged)`" in old


def test_report_opens_with_a_verdict_and_shows_cost_constraints_and_definitions(store, tmp_path):
    """The verdict names the best cell with its interval, the paired scope comparison on the
    objective, and its learning curve; the leaderboard shows time, CPU seconds (wall x the
    spec's CPUs per trial) and whether each trial met the constraints; settings that never vary
    leave the table; every metric shown is defined."""
    from mlflow.entities import Metric

    from study.spec import spec_from_dict

    objective = "cmi_lift/layer1"
    spec = spec_from_dict({"name": "verdict", "search": {"train.seed": {"choice": [0, 1, 2]},
                                                         "router.scope": {"choice": ["micro_batch", "global_batch"]}},
                           "objective": {"metric": objective, "constraints": {"load_entropy": {"min": 0.905}}},
                           "sampler": {"type": "grid"}, "resources": {"cpu": 2}})
    exp, parent = store.experiment("verdict", spec_yaml=spec.to_yaml())
    lifts = {"global_batch": [0.08, 0.07, 0.09], "micro_batch": [0.02, 0.03, 0.01]}
    for scope, values in lifts.items():
        for seed, lift in enumerate(values):
            metrics = {**trial_metrics("lbl", 0.5, seed, 0), objective: lift,
                       "train_s": 60.0 + seed, "elapsed_s": 70.0 + seed, "cost/cpu_s": 360.0}
            run_id = store.run(exp, parent, f"v-{scope}-{seed}", naming.ROLE_TRIAL,
                               trial_params("lbl", scope, 0, seed), metrics)
            # the objective's curve: half at step 10, all of it at 20 and at the last step
            store.client.log_batch(run_id, metrics=[Metric(objective, lift * f, 0, step) for step, f in
                                                    ((10, 0.5), (20, 1.0))])
    md = write_report("verdict", out_dir=tmp_path, tracking_uri=store.uri).read_text()
    verdict = section(md, "Verdict")
    best = stats.t.ppf(0.975, 2) * stats.sem(lifts["global_batch"])
    assert f"`lbl` at `global_batch`, +0.080 ± {best:.3f} (n=3)" in verdict
    diffs = [g - m for g, m in zip(lifts["global_batch"], lifts["micro_batch"])]  # 0.06 each
    assert f"difference {sum(diffs) / 3:+.3f}" in verdict and "**holds**" in verdict
    assert "its interval lies above 0: training added" in verdict
    # the method x scope table reads the same objective, and says so
    table = section(md, "Method x scope")
    # global 0.08 +- 0.025 lies above 0; micro 0.02 +- 0.025 reaches it
    assert training_did(table) == {"global_batch": "specialised", "micro_batch": "not shown"}
    assert f"*training did* read `purity_lift` and `{objective}` (the study's objective" in table
    assert f"rose, flat at the end, from +0.040 at step 10 to +0.080 at step {STEPS}" in verdict
    assert "- **Cost**: 0.60 CPU-hours over 6 runs;" in verdict and "CPU-hours a finding" in verdict

    board = section(md, "Leaderboard")
    head = [c.strip() for c in board.splitlines()[4].strip("|").split("|")]
    rows = {r[1]: r for r in table_rows(board)}
    seed2 = rows["v-global_batch-2"]
    assert seed2[head.index("train s")] == "62" and seed2[head.index("CPU s")] == "144"  # 72 s x 2 CPUs
    assert rows["v-global_batch-0"][head.index("constraints")] == "missed: `load_entropy` 0.900 < 0.905"
    assert seed2[head.index("constraints")] == "met"  # load_entropy 0.92
    assert "capacity" not in head and "The same in every trial: capacity dropless" in board
    assert "purity_lift" not in head  # no trial logged it: no empty column

    defined = section(md, "Metrics in this report")
    assert f"- `{objective}`: what training added to `cmi`" in defined and "MoE layer 1" in defined
    assert "- `load_entropy`: " in defined


def test_cell_bars_leave_out_a_reference_that_would_squash_the_differences(tmp_path):
    from study.results.figures import bars_figure
    from study.results.records import RunRecord

    def run(name, scope, seed, purity, role="trial"):
        return RunRecord(run_id=name, name=name, role=role, status="FINISHED", parent_id=None,
                         params={"router.method": "lbl", "router.scope": scope, "train.seed": str(seed)},
                         metrics={"purity": purity})

    trials = [run(f"{s}{k}", s, k, p + 0.01 * k) for s, p in (("micro_batch", 0.2), ("global_batch", 0.3))
              for k in range(3)]
    caption, _ = bars_figure(trials, run("ref", "", 0, 1.0, "reference"), tmp_path / "a.png")
    assert "reference router's `purity` is 1.000, off this axis" in caption  # 1.0 > 1.5 x 0.32
    caption, _ = bars_figure(trials, run("ref", "", 0, 0.4, "reference"), tmp_path / "b.png")
    assert "dashed: the reference router" in caption
    caption, missing = bars_figure(trials, None, tmp_path / "c.png", metric="cmi_lift")
    assert caption == "" and missing == "no trial logged cmi_lift"


def test_header_names_the_code_the_study_ran_on(store, tmp_path):
    exp, parent = store.experiment("with_code")
    for tag, value in ((naming.TAG_CODE_VERSION, "0.4.0"), (naming.TAG_GIT_COMMIT, "abc123"),
                       (naming.TAG_TORCH_VERSION, "2.13.0")):
        store.client.set_tag(parent, tag, value)
    store.run(exp, parent, "c0", naming.ROLE_TRIAL, trial_params("lbl", "global_batch", 0, 0),
              trial_metrics("lbl", 0.5, 0, 0))
    md = write_report("with_code", out_dir=tmp_path, tracking_uri=store.uri).read_text()
    assert "- code: moe-routing-study 0.4.0 (git commit `abc123`), torch 2.13.0" in md
    old = write_report("paper_like", out_dir=tmp_path / "old", tracking_uri=store.uri).read_text()
    assert "- code: not recorded" in old


def test_the_verdict_names_what_is_shown_on_other_metrics():
    """The objective's comparison not shown, raw purity's shown: the verdict says both, with
    the intervals, and points to the findings."""
    from study.results.findings import Comparison, Finding
    from study.results.stats import Estimate
    from study.results.verdict import real_line

    def finding(metric, mean, hw, verdict, p):
        return Finding("global_batch vs micro_batch", "lbl", "", verdict, metric=metric,
                       comparison=Comparison(Estimate(mean, hw, 3), p, True, 3), kind="directional",
                       p_values=(p,), p_adjusted=(p,))

    items = [finding("cmi_lift/layer1", 0.055, 0.039, "not shown", 0.062),
             finding("purity", 0.113, 0.013, "holds", 0.0014),
             finding("cmi", 0.01, 0.05, "not shown", 0.6)]
    line = real_line(items, "cmi_lift/layer1")
    assert "Of 1 comparisons on `cmi_lift/layer1`: holds 0, does not hold 0, not shown 1" in line
    assert "difference +0.055 [+0.016, +0.094], Holm p = 0.062: **not shown**" in line
    assert ("Shown on other metrics: global_batch vs micro_batch (lbl) on `purity`, "
            "+0.113 [+0.100, +0.126]: holds (Findings, below).") in line
    assert "`cmi`," not in line  # not shown there: not listed


def test_the_best_cell_is_set_against_its_untrained_router_the_byte_and_the_reference():
    from study.results.records import RunRecord
    from study.results.verdict import baseline_line, ranked_cells

    def run(name, role, seed, **metrics):
        return RunRecord(run_id=name, name=name, role=role, status="FINISHED", parent_id=None,
                         params={"router.method": "lbl", "router.scope": "global_batch", "train.seed": str(seed)},
                         metrics=metrics)

    trials = [run(f"t{k}", "trial", k, purity=0.33 + 0.01 * k, purity_init=0.32 + 0.01 * k, cmi=0.1,
                  cmi_lift=0.05 + 0.01 * k) for k in range(3)]
    line = baseline_line(ranked_cells(trials, "cmi_lift", False), "cmi_lift", run("r", "reference", 0, purity=1.0))
    assert "purity 0.340 (its untrained router's 0.330, from the bytes alone)" in line
    assert "against the reference router's 1.000" in line
    assert "`cmi` 0.100, where a router that sees only the current byte scores ~0 and the reference 1" in line
