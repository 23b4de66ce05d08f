"""Trial configuration: one dataclass per component, addressed by dotted keys.

The dotted key of a field (``router.method``, ``train.steps``) is the one vocabulary of the
project: a YAML key in a config or study spec, a Ray Tune config key and an MLflow param name
are all the same string. ``TrialConfig.from_flat`` / ``to_flat`` convert between the nested
dataclasses and that flat form, and ``validate`` collects every problem before raising once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints

from trainables.errors import ConfigError, brief, did_you_mean, name_problem
from trainables.scope import SCOPE_NAMES, SCOPES, WindowScope

# Names of the domains trainables.data.sources can build; kept here so validation needs no I/O.
BUILTIN_DOMAIN_NAMES = (
    "english", "german", "spanish", "chinese", "python", "c", "json",
    "math", "russian", "french",
)

METHODS = ("none", "lbl", "eb", "sh", "ba", "ec", "reference")
SCORE_FUNCTIONS = ("softmax", "sigmoid")
DROP_POLICIES = ("probs", "position")
GLOBAL_COUNTS = ("exact", "running")
DEFAULT_DOMAINS = ("english", "german", "chinese", "python", "c", "json")
NAMED_MIXES = {
    "default": DEFAULT_DOMAINS,
    # Latin-script languages and ASCII code: no domain owns a block of byte values the way
    # Chinese owns the bytes >= 0x80, so routing by domain needs context, not the byte alone
    "same_script": ("english", "german", "spanish", "python", "c", "json"),
}
"""``data.mix`` names: a domain set chosen by one key."""
STEP_COMPOSITIONS = ("independent", "domain_complete")
MAX_INT = 2**63
"""Integer settings are below this in magnitude (what torch, numpy and Ray take as an integer)."""
DEVICES = ("auto", "cpu", "cuda")
FIXED_VALUES: dict[str, tuple[str, ...]] = {
    "router.method": METHODS,
    "router.scope": SCOPE_NAMES,
    "router.drop_policy": DROP_POLICIES,
    "router.global_counts": GLOBAL_COUNTS,
    "model.score_fn": SCORE_FUNCTIONS,
    "train.device": DEVICES,
    "data.step_composition": STEP_COMPOSITIONS,
    "data.mix": ("", *NAMED_MIXES),
}
"""The keys whose values come from a fixed vocabulary, and that vocabulary: what ``validate``
accepts and what ``moe-study best --where`` can match (``data.mix`` may be empty: unset)."""


@dataclass
class DataConfig:
    """Which domains, how much text of each, and how micro-batches are composed."""

    domains: list[str] = field(default_factory=lambda: list(DEFAULT_DOMAINS))
    """Built-in domain names (see ``moe-study data describe``) and names of ``extra`` domains."""
    mix: str = ""
    """A named domain set (``NAMED_MIXES``: ``default``, ``same_script``) that sets ``domains``;
    empty: ``domains`` as given. Setting both to different lists is an error."""
    extra: list[dict] = field(default_factory=list)
    """User domains: ``{name, path | hf, format?, text_field?, split?}`` (local files or HF datasets)."""
    bytes_per_domain: int = 1_500_000
    """Text per domain before the train/validation split; every domain is cut to the same size."""
    weights: dict[str, float] = field(default_factory=dict)
    """Optional relative sampling weights per domain (default 1 each): a skewed mix."""
    seq_len: int = 128
    """Bytes per training sequence (the model is byte-level: vocabulary 256)."""
    val_fraction: float = 0.1
    """Share of each domain's documents held out for validation (split by document)."""
    domains_per_micro_batch: Union[int, str] = 1
    """How many domains one micro-batch holds: 1, n, or ``random`` (sequences drawn iid)."""
    step_composition: str = "domain_complete"
    """``independent``: each micro-batch's domains are drawn on their own, so a step may miss
    domains; ``domain_complete``: every optimizer step holds each domain equally (with one domain
    per micro-batch, each domain gets grad_accum / D micro-batches in a shuffled order; with
    ``random``, micro_batch_size * grad_accum / D sequences), on every data-parallel worker."""
    eval_sequences_per_domain: int = 32
    """Validation sequences per domain for the final and periodic evaluation."""
    cache_dir: str = ""
    """Where built mixes are cached (default: ``$MOE_STUDY_CACHE`` or ``~/.cache/moe-routing-study``)."""
    seed: int = 0
    """Seed of the document split (the mix itself is content-hashed)."""


@dataclass
class ModelConfig:
    """A small byte-level decoder-only transformer whose feed-forward layers are MoE."""

    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    n_experts: int = 24
    top_k: int = 4
    expert_hidden: int = 128
    n_shared_experts: int = 0
    """Always-on experts of width ``expert_hidden`` added to every MoE layer."""
    score_fn: str = "softmax"
    """Router scores: ``softmax`` over experts, or per-expert ``sigmoid`` (normalised over top-k)."""
    dense: bool = False
    """Replace every MoE layer by a dense FFN of the same active width (for baselines/benchmarks)."""


@dataclass
class RouterConfig:
    """Routing and load balancing."""

    method: str = "lbl"
    """none | lbl | eb | sh | ba | ec | reference."""
    scope: str = "global_batch"
    """Tokens whose statistics the balancing acts on: sequence | micro_batch | global_batch, or
    ``window`` (LBL only): every ``router.balance_window`` consecutive sequences of the step."""
    lbl_coef: float = 0.1
    """alpha of the auxiliary load-balancing loss alpha * E * sum_i f_i P_i. 0.1 by default, above
    the literature's 1e-3..1e-2: in a one-minute trial weaker coefficients make the scope effect
    no bigger than seed-to-seed noise (docs/calibration.md)."""
    z_loss_coef: float = 0.0
    """Router z-loss coefficient (mean squared logsumexp of router logits); 0 disables it."""
    bias_update_rate: float = 1e-3
    """u of the expert-bias (EB) update b_i += u * sign(mean_load - load_i)."""
    sinkhorn_iters: int = 20
    """Maximum Sinkhorn normalisation rounds (stops early when the change < 1e-4)."""
    auction_iters: int = 100
    """Maximum auction rounds of balanced assignment (BA)."""
    balance_window: int = 0
    """Sequences per balance window at scope ``window`` (the Qwen-style sweep: 1 is the sequence
    scope, micro_batch_size x grad_accum the global batch of one worker); must divide the
    step's sequences. Windows may span micro-batches: the step runs as one forward pass."""
    global_counts: str = "exact"
    """LBL at global_batch scope: ``exact`` runs the step's micro-batches as one forward pass so
    f counts the whole step for every token; ``running`` accumulates counts micro-batch by
    micro-batch in a buffer (less memory; the first micro-batches see partial counts)."""
    capacity_factor: float = 0.0
    """Slots per expert = capacity_factor * tokens * k / E within the scope; 0 means dropless."""
    drop_policy: str = "probs"
    """Which over-capacity assignments are dropped: lowest router ``probs`` or latest ``position``."""


@dataclass
class TrainConfig:
    """Optimisation and evaluation."""

    steps: int = 400
    micro_batch_size: int = 4
    """Sequences per forward pass."""
    grad_accum: int = 6
    """Micro-batches per optimizer step (the global batch on one worker)."""
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    """Evaluate (and report) every this many optimizer steps; the last step always evaluates."""
    seed: int = 0
    device: str = "auto"
    """auto (CUDA if available), cpu or cuda; CUDA runs under bf16 autocast."""
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default."""


@dataclass
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # -- flat dotted form ----------------------------------------------------------------------
    @classmethod
    def from_flat(cls, flat: dict[str, Any], *, check: bool = True) -> "TrialConfig":
        """Build from ``{"router.method": "lbl", ...}``; unknown keys and bad types are errors."""
        problems: list[str] = []
        cfg = cls()
        known = flat_field_types()
        for key, value in flat.items():
            if key not in known:
                problems.append(_unknown_key_message(key, known))
                continue
            coerced, err = _coerce(value, known[key])
            if err:
                problems.append(f"{key}: {err} (got {brief(value)})")
                continue
            section, name = key.split(".", 1)
            setattr(getattr(cfg, section), name, coerced)
        if problems:
            raise ConfigError(problems)
        if cfg.data.mix in NAMED_MIXES and "data.domains" not in flat:
            cfg.data.domains = list(NAMED_MIXES[cfg.data.mix])
        if check:
            cfg.validate()
        return cfg

    @classmethod
    def from_nested(cls, nested: dict[str, Any], *, check: bool = True) -> "TrialConfig":
        """Build from a YAML-style mapping; nested sections and dotted keys may be mixed."""
        return cls.from_flat(flatten(nested), check=check)

    def to_flat(self) -> dict[str, Any]:
        return {
            f"{section.name}.{f.name}": getattr(getattr(self, section.name), f.name)
            for section in dataclasses.fields(self)
            for f in dataclasses.fields(getattr(self, section.name))
        }

    # -- derived quantities --------------------------------------------------------------------
    @property
    def n_domains(self) -> int:
        return len(self.data.domains)

    def experts_per_domain_group(self) -> int:
        return self.model.n_experts // max(1, self.n_domains)

    def balance_window_tokens(self, world_size: int = 1) -> int:
        """Tokens over which the balancing statistics are taken (logged with every trial)."""
        return SCOPES[self.router.scope].tokens(self, world_size)

    def parameter_counts(self) -> dict[str, int]:
        """Total and active parameters, computed without building the model."""
        m = self.model
        d, h = m.d_model, m.expert_hidden
        vocab = 256
        attn = 4 * d * d
        norms = 2 * d
        expert = 3 * d * h  # SwiGLU: gate, up, down
        if m.dense:
            ffn_total = ffn_active = 3 * d * h * m.top_k
            router = 0
        else:
            router = d * m.n_experts
            ffn_total = expert * (m.n_experts + m.n_shared_experts) + router
            ffn_active = expert * (m.top_k + m.n_shared_experts) + router
        embed = vocab * d * 2 + d  # untied embedding and head, final norm
        return {
            "total": embed + m.n_layers * (attn + norms + ffn_total),
            "active": embed + m.n_layers * (attn + norms + ffn_active),
        }

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Check value ranges and combinations; raise one ConfigError listing every problem."""
        p: list[str] = []
        d, m, r, t = self.data, self.model, self.router, self.train
        for key in ("router.method", "router.scope", "router.drop_policy", "router.global_counts",
                    "model.score_fn", "train.device"):
            section, name = key.split(".")
            _choice(p, key, getattr(getattr(self, section), name), FIXED_VALUES[key])
        for key, value in [
            ("model.n_layers", m.n_layers), ("model.d_model", m.d_model),
            ("model.n_heads", m.n_heads), ("model.n_experts", m.n_experts),
            ("model.top_k", m.top_k), ("model.expert_hidden", m.expert_hidden),
            ("data.seq_len", d.seq_len), ("data.bytes_per_domain", d.bytes_per_domain),
            ("data.eval_sequences_per_domain", d.eval_sequences_per_domain),
            ("train.steps", t.steps), ("train.micro_batch_size", t.micro_batch_size),
            ("train.grad_accum", t.grad_accum), ("train.eval_every", t.eval_every),
            ("router.sinkhorn_iters", r.sinkhorn_iters), ("router.auction_iters", r.auction_iters),
        ]:
            if value < 1:
                p.append(f"{key}: must be >= 1 (got {value})")
        for key, value in [
            ("model.n_shared_experts", m.n_shared_experts), ("train.warmup_steps", t.warmup_steps),
            ("train.weight_decay", t.weight_decay), ("train.grad_clip", t.grad_clip),
            ("router.lbl_coef", r.lbl_coef), ("router.z_loss_coef", r.z_loss_coef),
            ("router.bias_update_rate", r.bias_update_rate), ("train.threads", t.threads),
            ("router.capacity_factor", r.capacity_factor),
        ]:
            if value < 0 or (isinstance(value, float) and not math.isfinite(value)):
                p.append(f"{key}: must be a finite number >= 0 (got {value})")
        if not (t.lr > 0 and math.isfinite(t.lr)):
            p.append(f"train.lr: must be > 0 (got {t.lr})")
        if not 0 <= t.min_lr_ratio <= 1:
            p.append(f"train.min_lr_ratio: must be in [0, 1] (got {t.min_lr_ratio})")
        if not 0 < d.val_fraction < 1:
            p.append(f"data.val_fraction: must be in (0, 1) (got {d.val_fraction})")
        if m.n_heads >= 1 and m.d_model % m.n_heads:
            p.append(f"model.n_heads: {m.n_heads} does not divide model.d_model={m.d_model}")
        elif m.n_heads >= 1 and (m.d_model // m.n_heads) % 2:
            p.append(f"model.n_heads: head size {m.d_model // m.n_heads} must be even (rotary)")
        if m.top_k > m.n_experts >= 1:
            p.append(f"model.top_k: {m.top_k} is larger than model.n_experts={m.n_experts}")
        if not d.domains:
            p.append("data.domains: at least one domain is needed")
        if len(set(map(brief, d.domains))) != len(d.domains):
            p.append(f"data.domains: duplicate names in {d.domains}")
        extra_names = [e.get("name") for e in d.extra if isinstance(e, dict)]
        bad_names = set()  # a domain name becomes a metric key (val_loss/<name>) and a file name
        for i, name in enumerate(d.domains):
            msg = name_problem(name)
            if msg:
                p.append(f"data.domains[{i}]: domain name {msg}")
                bad_names.add(brief(name))
        for i, e in enumerate(d.extra):
            if not isinstance(e, dict) or not e.get("name"):
                p.append(f"data.extra[{i}]: must be a mapping with a 'name'")
                continue
            msg = name_problem(e["name"])
            if msg:
                p.append(f"data.extra[{i}].name: domain name {msg}")
                bad_names.add(brief(e["name"]))
            elif not (e.get("path") or e.get("hf")):
                p.append(f"data.extra[{i}] ({e['name']}): needs 'path' or 'hf'")
        for name in d.weights:
            if name not in d.domains:
                p.append(f"data.weights: {name!r} is not one of data.domains {d.domains}")
        for name, w in d.weights.items():
            if not (isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 and _finite(w)):
                p.append(f"data.weights.{name}: must be a finite number > 0 (got {brief(w)})")
        if isinstance(d.domains_per_micro_batch, str):
            if d.domains_per_micro_batch != "random":
                p.append(
                    "data.domains_per_micro_batch: must be a positive integer or 'random' "
                    f"(got {d.domains_per_micro_batch!r})"
                )
        elif d.domains_per_micro_batch < 1:
            p.append(f"data.domains_per_micro_batch: must be >= 1 (got {d.domains_per_micro_batch})")
        elif d.domains and d.domains_per_micro_batch > min(len(d.domains), t.micro_batch_size):
            p.append(
                f"data.domains_per_micro_batch: {d.domains_per_micro_batch} exceeds the number of "
                f"domains ({len(d.domains)}) or train.micro_batch_size ({t.micro_batch_size})"
            )
        _check_named_mix(p, d)
        _check_step_composition(p, d, t)
        _check_balance_window(p, r, t)
        if r.method == "reference" and d.domains and m.n_experts >= 1:
            n_dom = len(d.domains)
            if m.n_experts % n_dom:
                p.append(
                    f"router.method: reference needs model.n_experts ({m.n_experts}) divisible by "
                    f"the number of domains ({n_dom})"
                )
            elif m.top_k > m.n_experts // n_dom:
                p.append(
                    f"model.top_k: {m.top_k} is larger than the reference router's group of "
                    f"{m.n_experts // n_dom} experts per domain"
                )
        known_domains = set(BUILTIN_DOMAIN_NAMES) | {n for n in extra_names if isinstance(n, str) and n}
        for name in d.domains:
            if isinstance(name, str) and name not in known_domains and brief(name) not in bad_names:
                hint = did_you_mean(name, sorted(known_domains))
                p.append(
                    f"data.domains: unknown domain {name!r} (not built in and not in data.extra){hint}"
                )
        if p:
            raise ConfigError(p)


# -- helpers -----------------------------------------------------------------------------------
def _finite(value: Any) -> bool:
    """``math.isfinite`` that says False, not OverflowError, for an int too big for a float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"router": {"method": "lbl"}}`` -> ``{"router.method": "lbl"}``.

    Only the top level (section names) is descended into: dict-valued fields such as
    ``data.weights`` stay dicts.
    """
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        key = str(key)
        full = f"{prefix}{key}"
        if not prefix and "." not in key and isinstance(value, dict) and key in SECTIONS:
            flat.update(flatten(value, prefix=f"{key}."))
        else:
            flat[full] = value
    return flat


def twice_given(nested: dict[str, Any]) -> list[str]:
    """Dotted keys that ``nested`` gives both in a section and as a dotted key
    (``model: {top_k: 2}`` and ``model.top_k: 4``): ``flatten`` would keep one silently."""
    seen: set[str] = set()
    twice: list[str] = []
    for key, value in nested.items():
        for flat_key in flatten({key: value}):
            if flat_key in seen and flat_key not in twice:
                twice.append(flat_key)
            seen.add(flat_key)
    return twice


@functools.lru_cache(maxsize=1)
def flat_field_types() -> dict[str, Any]:
    types: dict[str, Any] = {}
    for section in dataclasses.fields(TrialConfig):
        section_cls = get_type_hints(TrialConfig)[section.name]
        hints = get_type_hints(section_cls)
        for f in dataclasses.fields(section_cls):
            types[f"{section.name}.{f.name}"] = hints[f.name]
    return types


SECTIONS = tuple(f.name for f in dataclasses.fields(TrialConfig))
"""The trial config's section names (``data``, ``model``, ...): the first part of a dotted key."""


def read_fields(cls: type, raw: Mapping[str, Any], path: str, problems: list[str]) -> Any:
    """A dataclass ``cls`` from a YAML mapping with the typed reader of ``TrialConfig.from_flat``
    (``_coerce``): every unknown key (with a hint) and every ill-typed value is a problem named
    ``<path>.<key>`` and leaves the field at its default. A field's metadata may bound it:
    ``min`` (inclusive), ``above`` (exclusive), ``below`` (exclusive) and ``also`` (literal
    values accepted besides the type, e.g. ``"auto"``)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        f = fields.get(key)
        if f is None:
            names = tuple(fields)
            hint = did_you_mean(str(key), names, otherwise=f" (known: {', '.join(names)})")
            problems.append(f"{path}.{key}: unknown key{hint}")
            continue
        meta = f.metadata
        if value in meta.get("also", ()) and not isinstance(value, bool):
            values[key] = value
            continue
        typ = hints[key]
        if meta.get("also"):  # the literals are the field's only strings: "auto", not "many"
            typ = Union[tuple(a for a in get_args(typ) if a is not str) or (typ,)]
        coerced, err = _coerce(value, typ)
        if not err and isinstance(coerced, float) and not math.isfinite(coerced):
            # .inf passes "> 0" and .nan fails no comparison: neither is a meaningful setting
            problems.append(f"{path}.{key}: expected a finite number (got {brief(value)})")
            continue
        if not err and coerced is not None and not isinstance(coerced, bool) and isinstance(coerced, (int, float)):
            if ("min" in meta and coerced < meta["min"]) or ("above" in meta and not coerced > meta["above"]) \
                    or ("below" in meta and not coerced < meta["below"]):
                err = "out of range"
        if not err and meta.get("nonempty") and coerced == "":
            err = "empty"
        if err:
            problems.append(f"{path}.{key}: expected {_expectation(hints[key], meta)} (got {brief(value)})")
            continue
        # a whole number for a float field stays as written (1, not 1.0): a spec's content hash
        # is taken over its values, and a stored study must still match it
        keep = isinstance(value, int) and not isinstance(value, bool) and isinstance(coerced, float)
        values[key] = value if keep else coerced
    return cls(**values)


def _expectation(typ: Any, meta: Mapping[str, Any]) -> str:
    """What a field accepts, in words: ``an integer >= 1 or 'auto'``."""
    args = [a for a in get_args(typ) if a is not type(None)] or [typ]
    words = {bool: "true or false", int: "an integer", float: "a number",
             str: "a non-empty string" if meta.get("nonempty") else "a string"}
    kinds = [a for a in args if a in words and not (a is str and meta.get("also"))]
    text = words[kinds[0]] if kinds else "a value"
    bounds = [f">= {meta['min']}" if "min" in meta else "", f"> {meta['above']}" if "above" in meta else "",
              f"< {meta['below']}" if "below" in meta else ""]
    text = " ".join([text, " and ".join(b for b in bounds if b)]).strip()
    return " or ".join([text, *(repr(v) for v in meta.get("also", ()))])


def _unknown_key_message(key: str, known: dict[str, Any]) -> str:
    return f"{key}: unknown key{did_you_mean(key, known)}"


def _choice(problems: list[str], key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        problems.append(f"{key}: unknown value {brief(value)}, expected one of {list(allowed)}"
                        f"{did_you_mean(value, allowed)}")


def _coerce(value: Any, typ: Any) -> tuple[Any, str]:
    """Return (value, "") or (None, error). Accepts ints for floats, strings for nothing else."""
    origin = get_origin(typ)
    if origin in (Union, types.UnionType) and type(None) in get_args(typ):
        if value is None:  # an optional field: null is its unset value
            return None, ""
        rest = [a for a in get_args(typ) if a is not type(None)]
        return _coerce(value, rest[0] if len(rest) == 1 else Union[tuple(rest)])
    if origin in (Union, types.UnionType):
        for alt in get_args(typ):
            v, err = _coerce(value, alt)
            if not err:
                return v, ""
        return None, f"expected one of {[getattr(a, '__name__', str(a)) for a in get_args(typ)]}"
    if origin is list or typ is list:
        if not isinstance(value, (list, tuple)):
            return None, "expected a list"
        for item in value:  # checked, not converted: a config's hash sees the values as written
            if get_args(typ) and _coerce(item, get_args(typ)[0])[1]:
                return None, f"expected a list of {_words(get_args(typ)[0])}"
        return list(value), ""
    if origin is dict or typ is dict:
        if not isinstance(value, dict):
            return None, "expected a mapping"
        if get_args(typ):
            key_type, value_type = get_args(typ)
            if any(_coerce(k, key_type)[1] or _coerce(v, value_type)[1] for k, v in value.items()):
                return None, f"expected a mapping of {_words(key_type)} to {_words(value_type)}"
        return dict(value), ""
    if typ is bool:
        return (value, "") if isinstance(value, bool) else (None, "expected true or false")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and abs(value) < MAX_INT:
                return int(value), ""
            return None, "expected an integer"
        if abs(value) >= MAX_INT:  # no setting counts that far; torch and numpy take 64 bits
            return None, "expected an integer (this one does not fit in 64 bits)"
        return value, ""
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, "expected a number"
        try:
            return float(value), ""
        except OverflowError:  # an int beyond a float's range (1e308)
            return None, "expected a number (this integer is too large for one)"
    if typ is str:
        return (value, "") if isinstance(value, str) else (None, "expected a string")
    return value, ""


def _words(typ: Any) -> str:
    """``str`` -> ``strings``: an element type in a message."""
    return {str: "strings", float: "numbers", int: "integers", dict: "mappings", bool: "true/false"}.get(
        typ, getattr(typ, "__name__", str(typ)))


def _check_named_mix(p: list[str], d: DataConfig) -> None:
    if not d.mix:
        return
    if d.mix not in NAMED_MIXES:
        p.append(f"data.mix: unknown mix {d.mix!r}; expected one of {list(NAMED_MIXES)}")
    elif list(d.domains) != list(NAMED_MIXES[d.mix]):
        p.append(f"data.domains: {d.domains} differs from data.mix {d.mix!r} "
                 f"({list(NAMED_MIXES[d.mix])}); set one of the two")


def _check_step_composition(p: list[str], d: DataConfig, t: "TrainConfig") -> None:
    if d.step_composition not in STEP_COMPOSITIONS:
        p.append(f"data.step_composition: expected one of {list(STEP_COMPOSITIONS)} "
                 f"(got {d.step_composition!r})")
        return
    if d.step_composition == "independent" or not d.domains:
        return
    if d.domains_per_micro_batch == 1:
        units, what = t.grad_accum, "with one domain per micro-batch needs train.grad_accum"
    elif d.domains_per_micro_batch == "random":
        units, what = t.micro_batch_size * t.grad_accum, "needs train.micro_batch_size x train.grad_accum"
    else:
        p.append("data.step_composition: domain_complete works with data.domains_per_micro_batch "
                 f"1 or 'random' (got {d.domains_per_micro_batch!r})")
        return
    if any(not (isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 and _finite(w))
           for w in d.weights.values()):
        return  # named by the weights check
    if step_shares(d.domains, d.weights, units) is None:
        if d.weights:
            p.append(f"data.step_composition: domain_complete {what} ({units}) to split in "
                     f"proportion to data.weights {d.weights} (missing domains weigh 1) over "
                     f"the {len(d.domains)} domains, in whole numbers")
        else:
            p.append(f"data.step_composition: domain_complete {what} ({units}) divisible by the "
                     f"{len(d.domains)} domains")


def step_shares(domains: Sequence[str], weights: Mapping[str, float], units: int) -> list[int] | None:
    """How many of a domain-complete step's ``units`` (micro-batches, or sequences with random
    micro-batches) each domain gets: in proportion to ``weights`` (1 where missing), or None when
    that is no whole number for some domain."""
    w = [float(weights.get(d, 1.0)) for d in domains]
    shares = [units * x / sum(w) for x in w]
    whole = [round(s) for s in shares]
    if any(abs(s - r) > 1e-9 or r < 1 for s, r in zip(shares, whole)):
        return None
    return whole


def _check_balance_window(p: list[str], r: RouterConfig, t: TrainConfig) -> None:
    """scope ``window`` needs LBL and a window that tiles the optimizer step's sequences."""
    step_sequences = t.micro_batch_size * t.grad_accum
    if r.scope != WindowScope.name:
        if r.balance_window:
            p.append(f"router.balance_window: only used with router.scope: window "
                     f"(got scope {r.scope!r}); leave it 0")
        return
    if r.method != "lbl":
        p.append(f"router.scope: window is implemented for router.method lbl only (got {r.method!r})")
    if r.balance_window < 1:
        p.append(f"router.balance_window: must be >= 1 with router.scope: window (got {r.balance_window})")
    elif step_sequences >= 1 and step_sequences % r.balance_window:
        p.append(f"router.balance_window: {r.balance_window} does not divide the step's "
                 f"{step_sequences} sequences (train.micro_batch_size x train.grad_accum)")
