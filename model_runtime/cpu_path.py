"""Choosing the CPU path per machine, by measurement: how each phase's linears multiply, and the KV cache's dtype.

The default used to be int8 weights with bf16 activations everywhere, tuned on an AVX-512 CPU with bf16 and VNNI
(2.3x fp32 there). On an AVX2-only AMD EPYC the same default prefilled 2k tokens in 30 s against 6.5 s for fp32,
and the 5 s time budget then returned nothing. So at first start a short autotune (a few seconds) times the
loaded model's real linear shapes on random weights, for decode rows (1, 4, 16) and prefill rows (64, 256), over
every candidate path, plus decode attention over fp32 and bf16 caches; `choose` picks per phase, never slower than
fp32 (fp32 is a candidate and wins ties), and the plan is cached per model shapes, CPU, ISA and torch version.
`--quantize` and `--dtype` still decide when given (`plan_from_flags`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from repocomplete.model_runtime.config import private_dir
from repocomplete.model_runtime.cpu import CpuInfo, cpu_info
from repocomplete.model_runtime.quantize import DECODE_MAX_ROWS, DTYPES, Int4Weights, LinearPath, make_weights

log = logging.getLogger(__name__)

PLAN_FORMAT = 3  # 3: int4 is no longer among auto's choices (plans cached with it are measured again)
DECODE_ROWS = (1, 4, DECODE_MAX_ROWS)
PREFILL_ROWS = (64, 256)
KV_PROBE_TOKENS = 2048
ROUNDS = 3
# The machine was busy when the 1-minute load average plus the measurement's own threads exceeds this many per
# logical CPU: other work then competed with the measurement for the cores it needed.
BUSY_LOAD = 1.25
# Another path must beat the reference by this much to be chosen: run-to-run noise on a busy 2-core machine is a
# few percent, and a path that only ties is not worth its conversions.
MARGIN = 0.95
# The order of precision: a step down must pay for itself.
PRECISION = {"fp32": 0, "bf16": 1, "int8": 2, "int4": 3}
# The weight forms `auto` chooses among. int4 is not one: on an AMD EPYC where it decoded 29% faster than int8 over
# the model's linears (4.8 against 6.7 ms), the shipped default lost 3.6 ES on markdown-it-py with repository context
# (45.78 against 49.33) and its valid identifiers fell to 91-94% on the member suites (98-99% with int8): the
# quantization costs the adapter more than its +2.6% NLL on the base model said. `--quantize int4` still asks for it.
AUTO_WEIGHTS = ("fp32", "bf16", "int8")
# Prefill keeps the decode path's weights (no second copy) unless another form prefills at least this much faster.
SECOND_FORM_GAIN = 0.85

DECODE_CANDIDATES = tuple(LinearPath.parse(n) for n in ("fp32", "bf16", "int8/bf16", "int8/fp32"))
PREFILL_CANDIDATES = tuple(LinearPath.parse(n) for n in ("fp32", "bf16", "int8/bf16", "int8/fp32"))
FP32 = LinearPath("fp32", "fp32")


@dataclass
class Shapes:
    """The distinct linear shapes of one forward: (in, out) -> calls per token; lm_head runs one row per step."""

    layers: dict[tuple[int, int], int]
    lm_head: tuple[int, int] | None
    kv_heads: int = 0
    query_groups: int = 1
    head_dim: int = 0
    n_layers: int = 0

    def signature(self) -> str:
        items = sorted(self.layers.items())
        return f"{items}|{self.lm_head}|{self.kv_heads}x{self.query_groups}x{self.head_dim}x{self.n_layers}"


@dataclass
class CpuPlan:
    decode: LinearPath
    prefill: LinearPath
    kv_dtype: str  # "fp32" | "bf16"
    source: str  # "measured" | "cache" | "flags"
    table: dict = field(default_factory=dict)  # {"decode": {path: {rows: ms}}, "prefill": ..., "kv": {dtype: ms}}
    cpu: dict = field(default_factory=dict)
    seconds: float = 0.0  # how long the measurement took
    load: float = 0.0  # the machine's load average when it was measured

    @property
    def bf16_fast(self) -> bool:
        """bf16 matmuls are the fast ones here: the plan prefills in bf16 (AVX-512 with bf16, AMX; never AVX2 only,
        where a bf16 GEMM runs at a sixth of fp32's speed)."""
        return self.prefill.act == "bf16"

    @property
    def stream_dtype(self) -> torch.dtype:
        """The residual stream's dtype: bf16 only when both phases compute in bf16 (elementwise ops and prefill
        attention in bf16 are slow where bf16 GEMMs are)."""
        both = self.decode.act == self.prefill.act == "bf16"
        return torch.bfloat16 if both else torch.float32

    @property
    def kv_torch_dtype(self) -> torch.dtype:
        return DTYPES[self.kv_dtype]

    @property
    def name(self) -> str:
        return f"decode {self.decode.name}, prefill {self.prefill.name}, kv {self.kv_dtype}"

    def to_json(self) -> dict:
        return {"decode": self.decode.name, "prefill": self.prefill.name, "kv": self.kv_dtype, "source": self.source,
                "cpu": self.cpu, "seconds": round(self.seconds, 2), "load": self.load, "table": self.table}

    @classmethod
    def from_json(cls, data: dict, source: str) -> "CpuPlan":
        return cls(LinearPath.parse(data["decode"]), LinearPath.parse(data["prefill"]), data["kv"], source,
                   data.get("table", {}), data.get("cpu", {}), data.get("seconds", 0.0), data.get("load", 0.0))


# ---------------------------------------------------------------------------------------------------------------
# Choosing, from a table of timings (a pure function: the tests feed it recorded tables).


def restrict(table: dict, act: str | None = None, weights: str | None = None) -> dict:
    """The table without the paths a flag rules out (`--dtype` fixes the activation dtype)."""
    def keep(name: str) -> bool:
        path = LinearPath.parse(name)
        return (act is None or path.act == act) and (weights is None or path.weights == weights)

    out = dict(table)
    for phase in ("decode", "prefill"):
        out[phase] = {n: v for n, v in table.get(phase, {}).items() if keep(n)}
    return out


def choose(table: dict) -> tuple[LinearPath, LinearPath, str]:
    """(decode path, prefill path, kv dtype) from measured milliseconds.

    table = {"decode": {name: {rows: ms}}, "prefill": {name: {rows: ms}}, "kv": {"fp32": ms, "bf16": ms}};
    rows may be ints or strings (JSON). A candidate missing from the table (its kernel absent) is not chosen.
    """
    def auto(phase: str) -> dict:  # (a table measured before int4 left the candidates may hold it)
        return {n: v for n, v in table[phase].items() if LinearPath.parse(n).weights in AUTO_WEIGHTS}

    decode_ms = {n: _cost(v, DECODE_ROWS[:1]) for n, v in auto("decode").items()}
    decode = _best(decode_ms)
    prefill_ms = {n: _cost(v, PREFILL_ROWS, per_row=True) for n, v in auto("prefill").items()}
    same = {n: ms for n, ms in prefill_ms.items() if LinearPath.parse(n).weights == decode.weights}
    best_all = _best(prefill_ms)
    prefill = _best(same) if same else best_all
    # A second weight form costs memory: only for a clear gain, or when the decode form's own prefill loses to fp32.
    if best_all != prefill and (
        prefill_ms[best_all.name] < SECOND_FORM_GAIN * prefill_ms[prefill.name]
        or prefill_ms[prefill.name] * MARGIN > prefill_ms.get(FP32.name, float("inf"))
    ):
        prefill = best_all
    kv = table.get("kv") or {"fp32": 1.0}
    kv_dtype = "bf16" if "bf16" in kv and kv["bf16"] < MARGIN * kv.get("fp32", float("inf")) else "fp32"
    return decode, prefill, kv_dtype


def _cost(by_rows: dict, rows: tuple[int, ...], per_row: bool = False) -> float:
    values = {int(r): ms for r, ms in by_rows.items()}
    picked = [values[r] / (r if per_row else 1) for r in rows if r in values]
    return sum(picked) / len(picked) if picked else float("inf")


def _best(costs: dict[str, float]) -> LinearPath:
    """The cheapest path, preferring precision: going down one step (fp32 -> bf16 -> int8) must pay for itself."""
    ranked = sorted(costs, key=lambda n: (PRECISION[LinearPath.parse(n).weights], costs[n]))
    best = ranked[0]
    for name in ranked[1:]:
        if costs[name] < MARGIN * costs[best]:
            best = name
    return LinearPath.parse(best)


# ---------------------------------------------------------------------------------------------------------------
# Measuring.


def model_shapes(model) -> Shapes:
    """The linear shapes one token goes through, as the forward runs them (q/k/v and gate/up fused where our
    Llama-family forward fuses them)."""
    from repocomplete.model_runtime.fast_llama import supports

    config = model.config.get_text_config()
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    n_layers = config.num_hidden_layers
    lm_head = model.get_output_embeddings()
    lm = (lm_head.in_features, lm_head.out_features) if isinstance(lm_head, torch.nn.Linear) else None
    layers: dict[tuple[int, int], int] = {}
    if supports(model):
        h, inter = config.hidden_size, config.intermediate_size
        for shape in ((h, (n_heads + 2 * n_kv) * head_dim), (n_heads * head_dim, h), (h, 2 * inter), (inter, h)):
            layers[shape] = layers.get(shape, 0) + n_layers
    else:
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not lm_head:
                shape = (module.in_features, module.out_features)
                layers[shape] = layers.get(shape, 0) + 1
    return Shapes(layers, lm, n_kv, n_heads // n_kv, head_dim, n_layers)


def _timer(fn: Callable[[], object], min_s: float = 0.004, max_reps: int = 20) -> float:
    """Milliseconds per call: the mean over enough repetitions to take min_s (after one warm-up call)."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    reps = max(1, min(max_reps, int(min_s / max(once, 1e-6))))
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1000


def _supported(path: LinearPath, shapes: Shapes) -> bool:
    if path.weights == "int8":
        return hasattr(torch.ops.aten, "_weight_int8pack_mm")
    if path.weights == "int4":  # layers whose input is not a multiple of the group would run int8: not measured
        return all(Int4Weights.supported(*shape) for shape in list(shapes.layers) + [shapes.lm_head] if shape)
    return True


@torch.inference_mode()
def measure(shapes: Shapes, decode_rows=DECODE_ROWS, prefill_rows=PREFILL_ROWS,
            decode_candidates=DECODE_CANDIDATES, prefill_candidates=PREFILL_CANDIDATES) -> dict:
    """Milliseconds per forward's worth of linears for each candidate and row count, and decode attention per
    token over each KV dtype."""
    g = torch.Generator().manual_seed(0)
    weights = {shape: torch.randn(shape[1], shape[0], generator=g) * 0.02 for shape in shapes.layers}
    if shapes.lm_head:
        weights[shapes.lm_head] = torch.randn(shapes.lm_head[1], shapes.lm_head[0], generator=g) * 0.02
    table: dict = {"decode": {}, "prefill": {}}
    forms: dict[str, dict] = {}

    def form(kind: str, shape):
        forms.setdefault(kind, {})
        if shape not in forms[kind]:
            forms[kind][shape] = make_weights(kind, weights[shape])
        return forms[kind][shape]

    def run(path: LinearPath, rows: int, with_head: bool) -> float:
        total = 0.0
        small = rows <= DECODE_MAX_ROWS
        for shape, count in shapes.layers.items():
            w = form(path.weights, shape)
            x = torch.randn(rows, shape[0], generator=g).to(path.act_dtype)
            total += count * _timer(lambda: w.matmul(x, path.act_dtype, small))
        if with_head and shapes.lm_head:
            w = form(path.weights, shapes.lm_head)
            x = torch.randn(1, shapes.lm_head[0], generator=g).to(path.act_dtype)
            total += _timer(lambda: w.matmul(x, path.act_dtype, True))
        return total

    jobs = [("decode", path, r) for path in decode_candidates if _supported(path, shapes) for r in decode_rows]
    jobs += [("prefill", path, r) for path in prefill_candidates if _supported(path, shapes) for r in prefill_rows]
    # Rounds over every candidate, keeping each one's best: another process that steals the cores for a moment
    # then spoils one round of several candidates, not every round of one.
    for _ in range(ROUNDS):
        for phase, path, rows in jobs:
            ms = run(path, rows, with_head=phase == "decode" and rows == 1)
            by_rows = table[phase].setdefault(path.name, {})
            by_rows[rows] = round(min(ms, by_rows.get(rows, float("inf"))), 3)
    forms.clear()
    table["kv"] = _measure_kv(shapes)
    return table


def _measure_kv(shapes: Shapes) -> dict:
    if not shapes.kv_heads or not shapes.head_dim:
        return {}
    from repocomplete.model_runtime.attention import decode_attention

    out = {}
    h, d = shapes.kv_heads * shapes.query_groups, shapes.head_dim
    for name, dtype in DTYPES.items():
        q = torch.randn(1, h, 1, d).to(dtype)
        # A strided view of a larger buffer, as the slab hands attention.
        k = torch.randn(1, shapes.kv_heads, KV_PROBE_TOKENS + 256, d).to(dtype)[:, :, :KV_PROBE_TOKENS]
        v = torch.randn(1, shapes.kv_heads, KV_PROBE_TOKENS + 256, d).to(dtype)[:, :, :KV_PROBE_TOKENS]
        best = min(_timer(lambda: decode_attention(q, k, v, None, d**-0.5)) for _ in range(ROUNDS))
        out[name] = round(shapes.n_layers * best, 3)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The cached plan.


def plan_key(shapes: Shapes, info: CpuInfo) -> dict:
    return {"format": PLAN_FORMAT, "shapes": shapes.signature(), "cpu": info.name, "capability": info.capability,
            "flags": list(info.flags), "isa_env": [list(kv) for kv in info.isa_env], "torch": info.torch,
            "threads": info.threads}


def plan_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / "cpu-path" / f"{digest}.json"


def tuned_plan(shapes: Shapes, cache_dir: Path, retune: bool = False, measure_fn=None, confirm_fn=None) -> CpuPlan:
    """The machine's plan for these shapes: from the cache when this CPU, ISA, torch and thread count were
    measured before, else measured now (a few seconds) and cached.

    Timings taken while other processes kept the cores busy are unreliable (OpenMP threads wait on a descheduled
    sibling: a 2-thread GEMM ran 100x slower beside a test suite). A plan measured under load is used and cached,
    but measured again at a later start that finds the machine quieter."""
    info = cpu_info()
    key = plan_key(shapes, info)
    path = plan_path(cache_dir, key)
    load = machine_load()
    if not retune:
        try:
            data = json.loads(path.read_text())
            if data.get("key") == key:
                cached_load = data["plan"].get("load", 0.0)
                if not busy(cached_load, info.threads) or load >= cached_load:
                    return CpuPlan.from_json(data["plan"], "cache")
        except (OSError, ValueError, KeyError):
            pass  # missing or unreadable: measure again
    t0 = time.perf_counter()
    table = (measure_fn or measure)(shapes)
    decode, prefill, kv = choose(table)
    decode, prefill = (confirm_fn or confirm)(shapes, decode, prefill)
    plan = CpuPlan(decode, prefill, kv, "measured", _jsonable(table), info.to_json(), time.perf_counter() - t0, load)
    log.info("cpu path for %s: %s (measured in %.1f s, load %.1f)", info.summary, plan.name, plan.seconds, load)
    try:
        private_dir(path.parent.parent)
        private_dir(path.parent)
        tmp = path.with_suffix(".tmp")
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(json.dumps({"key": key, "plan": plan.to_json()}, indent=1))
        tmp.replace(path)
    except OSError as e:  # a read-only cache costs a re-measurement next start, nothing else
        log.warning("cannot cache the cpu path in %s: %s", path, e)
    return plan


def busy(load: float, threads: int, cpus: int | None = None) -> bool:
    """Whether a measurement with `threads` threads at this load average competed with other work. The load
    average counts the machine's runnable tasks (the host's, in most containers), so it is compared with the
    machine's logical CPUs: on 2 CPUs, two busy single-threaded processes (load 2.3) left a 2-thread measurement
    no core of its own, and its GEMMs ran 55x slower than one thread's."""
    return load + threads > BUSY_LOAD * (cpus or os.cpu_count() or 1)


def machine_load() -> float:
    """The 1-minute load average (0 where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return 0.0


@torch.inference_mode()
def confirm(shapes: Shapes, decode: LinearPath, prefill: LinearPath, rounds: int = 5) -> tuple[LinearPath, LinearPath]:
    """Time each chosen non-fp32 path against fp32 again, alternating, on the shape that dominates; keep the choice
    only if its best time beats fp32's by the margin. The guard that no measurement accident makes the default
    slower than fp32."""
    if not shapes.layers:
        return decode, prefill
    shape = max(shapes.layers, key=lambda s: s[0] * s[1] * shapes.layers[s])
    weight = torch.randn(shape[1], shape[0], generator=torch.Generator().manual_seed(1)) * 0.02
    out = []
    for path, rows in ((decode, 1), (prefill, PREFILL_ROWS[-1])):
        if path == FP32:
            out.append(path)
            continue
        x = torch.randn(rows, shape[0])
        forms = {p: make_weights(p.weights, weight) for p in (path, FP32)}
        best = {p: float("inf") for p in forms}
        for _ in range(rounds):
            for p, w in forms.items():
                best[p] = min(best[p], _timer(lambda: w.matmul(x, p.act_dtype, rows <= DECODE_MAX_ROWS)))
        out.append(path if best[path] < MARGIN * best[FP32] else FP32)
    return out[0], out[1]


def _jsonable(table: dict) -> dict:
    return json.loads(json.dumps(table))


def plan_from_flags(quantize: str, dtype: torch.dtype) -> CpuPlan:
    """The fixed plan of explicit flags: `--quantize none` keeps dense weights in the dtype (fp32 by default),
    int8/int4 multiply in the dtype (bf16 by default) in both phases."""
    act = "bf16" if dtype == torch.bfloat16 else "fp32"
    weights = act if quantize == "none" else quantize
    path = LinearPath(weights, act)
    return CpuPlan(path, path, "fp32", "flags", cpu=cpu_info().to_json())


def format_table(plan: CpuPlan) -> str:
    """The measured table as text (`repocomplete doctor`)."""
    lines = []
    for phase in ("decode", "prefill"):
        rows = sorted({int(r) for v in plan.table.get(phase, {}).values() for r in v})
        if not rows:
            continue
        chosen = getattr(plan, phase).name
        lines.append(f"{phase} (ms per forward's linears){'':<4}" + "".join(f"{f'{r} rows':>12}" for r in rows))
        for name, by_rows in plan.table[phase].items():
            values = {int(r): ms for r, ms in by_rows.items()}
            mark = "*" if name == chosen else " "
            lines.append(f"  {mark} {name:<34}" + "".join(f"{values.get(r, float('nan')):>12.3f}" for r in rows))
    kv = plan.table.get("kv")
    if kv:
        lines.append(f"decode attention over {KV_PROBE_TOKENS} cached tokens (ms per token, all layers): "
                     + ", ".join(f"{'*' if k == plan.kv_dtype else ''}{k} {v:.3f}" for k, v in kv.items()))
    return "\n".join(lines)


def to_dict(plan: CpuPlan) -> dict:
    """The short form reported beside every figure (complete --json, bench)."""
    return {"decode": plan.decode.name, "prefill": plan.prefill.name, "kv": plan.kv_dtype, "source": plan.source,
            "capability": plan.cpu.get("capability"), "cpu": plan.cpu.get("name"), "threads": plan.cpu.get("threads")}


def engine_path(engine) -> dict | None:
    """The CPU path a local engine runs (`to_dict`), None for an endpoint or a GPU: reported beside its figures, which
    move with it (an int4 decode answers otherwise than an int8 one)."""
    plan = getattr(getattr(engine, "loaded", None), "plan", None)
    return to_dict(plan) if plan is not None else None
