"""The CPU path: choice from recorded timing tables, the cached plan and its key, the flags that override it, the
threads, and the chosen path's logits against the float reference."""

from __future__ import annotations

import json
import time

import pytest
import torch

from repocomplete.model_runtime import cpu as cpu_mod
from repocomplete.model_runtime import cpu_path
from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.model_runtime.cpu import available_cores, cgroup_cpu_limit, physical_cores
from repocomplete.model_runtime.cpu_path import Shapes, choose, restrict, tuned_plan
from repocomplete.model_runtime.engine import CancelToken, CompletionRequest, Engine
from repocomplete.model_runtime.kv_cache import SlabCache
from repocomplete.model_runtime.loading import load_model
from repocomplete.model_runtime.templates import PromptParts

# Recorded on a 2-core AMD EPYC, ms per forward's linears of SmolLM2-135M: natively (AVX-512 with bf16 and VNNI)
# and with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 (`repocomplete doctor` on each).
AVX512 = {
    "decode": {"fp32": {1: 12.4, 4: 18.1, 16: 28.7}, "bf16": {1: 12.3, 4: 8.2, 16: 11.7},
               "int8/bf16": {1: 2.2, 4: 3.2, 16: 11.4}, "int8/fp32": {1: 43.4, 4: 142.9, 16: 569.9},
               "int4/bf16": {1: 2.4, 4: 3.1, 16: 10.5}},
    "prefill": {"fp32": {64: 90.5, 256: 302.1}, "bf16": {64: 26.8, 256: 70.0}, "int8/bf16": {64: 46.4, 256: 130.9},
                "int8/fp32": {64: 403.3, 256: 813.2}, "int4/bf16": {64: 73.4, 256: 110.0},
                "int4/fp32": {64: 154.4, 256: 364.7}},
    "kv": {"fp32": 3.64, "bf16": 7.66},
}
AVX2_EMULATED = {
    "decode": {"fp32": {1: 13.0, 4: 20.2, 16: 30.0}, "bf16": {1: 6.3, 4: 17.8, 16: 69.9},
               "int8/bf16": {1: 3.9, 4: 6.8, 16: 27.9}, "int8/fp32": {1: 44.3, 4: 140.2, 16: 558.1},
               "int4/bf16": {1: 7.4, 4: 6.6, 16: 23.7}},
    "prefill": {"fp32": {64: 90.7, 256: 305.9}, "bf16": {64: 270.2, 256: 1083.9}, "int8/bf16": {64: 282.9, 256: 1088.2},
                "int8/fp32": {64: 129.1, 256: 350.9}, "int4/bf16": {64: 298.7, 256: 1118.9},
                "int4/fp32": {64: 143.4, 256: 354.1}},
    "kv": {"fp32": 3.48, "bf16": 26.78},
}
# The AMD Zen 3 of the issue, AVX2 only, per decode row of one 576 x 1536 linear (us): fp32 331, int8 with bf16
# activations 1,046, with fp32 activations 4,611; 512 prefill rows 31 ms fp32 against 46 ms int8/bf16.
ZEN3 = {
    "decode": {"fp32": {1: 0.331}, "bf16": {1: 0.9}, "int8/bf16": {1: 1.046}, "int8/fp32": {1: 4.611}},
    "prefill": {"fp32": {64: 4.0, 256: 15.5}, "bf16": {64: 6.0, 256: 23.0}, "int8/bf16": {64: 6.1, 256: 23.2},
                "int8/fp32": {64: 4.6, 256: 16.4}},
    "kv": {"fp32": 1.0, "bf16": 3.0},
}


def names(choice):
    decode, prefill, kv = choice
    return decode.name, prefill.name, kv


def test_where_int8_loses_fp32_is_chosen_for_both_phases():
    assert names(choose(ZEN3)) == ("fp32", "fp32", "fp32")


def test_avx512_with_bf16_decodes_int8_and_prefills_a_bf16_copy():
    # bf16 prefills 1.9x faster than the int8 form's own de-quantized GEMM: worth a second copy of the weights.
    assert names(choose(AVX512)) == ("int8/bf16", "bf16", "fp32")


def test_emulated_avx2_decodes_int8_but_prefills_fp32():
    assert names(choose(AVX2_EMULATED)) == ("int8/bf16", "fp32", "fp32")


def test_prefill_keeps_the_decode_form_when_another_is_only_slightly_faster():
    table = json.loads(json.dumps(AVX512))
    table["prefill"]["int8/bf16"] = {"64": 28.0, "256": 75.0}  # within 15% of bf16: no second copy (JSON keys)
    assert names(choose(table)) == ("int8/bf16", "int8/bf16", "fp32")


def test_auto_never_chooses_int4_however_fast_it_measures():
    table = json.loads(json.dumps(AVX512))
    table["decode"]["int4/bf16"] = {"1": 0.5}  # 4x faster than int8: its answers are still worse
    table["prefill"]["int4/bf16"] = {"64": 1.0, "256": 2.0}
    assert names(choose(table)) == ("int8/bf16", "bf16", "fp32")
    assert all(p.weights != "int4" for p in cpu_path.DECODE_CANDIDATES + cpu_path.PREFILL_CANDIDATES)


def test_a_path_must_beat_fp32_by_the_margin():
    table = {"decode": {"fp32": {1: 10.0}, "int8/bf16": {1: 9.8}}, "prefill": {"fp32": {64: 10.0, 256: 40.0}},
             "kv": {"fp32": 1.0, "bf16": 0.98}}
    assert names(choose(table)) == ("fp32", "fp32", "fp32")


def test_the_decode_form_prefill_never_loses_to_fp32():
    table = {"decode": {"fp32": {1: 10.0}, "int8/bf16": {1: 3.0}},
             "prefill": {"fp32": {64: 10.0, 256: 40.0}, "int8/bf16": {64: 11.0, 256: 44.0}}}
    assert names(choose(table)) == ("int8/bf16", "fp32", "fp32")


def test_a_dtype_flag_restricts_the_candidates():
    assert names(choose(restrict(AVX512, act="fp32"))) == ("fp32", "fp32", "fp32")
    assert names(choose(restrict(AVX2_EMULATED, act="bf16"))) == ("int8/bf16", "int8/bf16", "fp32")


# -- the cached plan -------------------------------------------------------------------------------------------

SHAPES = Shapes({(64, 128): 2, (128, 64): 2}, (64, 1000), kv_heads=2, query_groups=2, head_dim=16, n_layers=2)


REAL_CONFIRM = cpu_path.confirm


@pytest.fixture(autouse=True)
def keep_the_choice(monkeypatch):
    """The confirmation re-measures on this machine; the tests of the choice feed recorded tables only."""
    monkeypatch.setattr(cpu_path, "confirm", lambda shapes, decode, prefill: (decode, prefill))
    monkeypatch.setattr(cpu_path, "machine_load", lambda: 0.0)


class FakeMeasure:
    def __init__(self, table):
        self.table, self.calls = table, 0

    def __call__(self, shapes):
        self.calls += 1
        return self.table


def test_the_plan_is_measured_once_then_read_from_the_cache(tmp_path):
    measure = FakeMeasure(AVX512)
    first = tuned_plan(SHAPES, tmp_path / "cache", measure_fn=measure)
    (plan_file,) = (tmp_path / "cache" / "cpu-path").iterdir()
    assert plan_file.stat().st_mode & 0o777 == 0o600  # the user's alone, as every cache file
    assert (tmp_path / "cache" / "cpu-path").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    tmp_path = tmp_path / "cache"
    second = tuned_plan(SHAPES, tmp_path, measure_fn=measure)
    assert (first.source, second.source, measure.calls) == ("measured", "cache", 1)
    assert second.to_json()["table"] == first.to_json()["table"]
    assert (second.decode.name, second.prefill.name) == ("int8/bf16", "bf16")
    tuned_plan(SHAPES, tmp_path, retune=True, measure_fn=measure)
    assert measure.calls == 2


@pytest.mark.parametrize("change", ["capability", "torch", "name", "threads", "isa_env", "shapes"])
def test_the_cache_key_covers_cpu_isa_torch_threads_and_shapes(tmp_path, monkeypatch, change):
    measure = FakeMeasure(AVX512)
    tuned_plan(SHAPES, tmp_path, measure_fn=measure)
    real = cpu_mod.cpu_info()
    changed = {
        # a capability other than this machine's (on an AVX2 host, "AVX2" would be no change)
        "capability": dict(capability="AVX512" if real.capability == "AVX2" else "AVX2"),
        "torch": dict(torch="9.9.9"), "name": dict(name="Other CPU"),
        "threads": dict(threads=real.threads + 1),
        "isa_env": dict(isa_env=real.isa_env + (("ONEDNN_MAX_CPU_ISA", "DEFAULT"),)),
        "shapes": {},
    }[change]
    import dataclasses

    monkeypatch.setattr(cpu_path, "cpu_info", lambda: dataclasses.replace(real, **changed))
    shapes = Shapes({(64, 256): 2}, None) if change == "shapes" else SHAPES
    assert tuned_plan(shapes, tmp_path, measure_fn=measure).source == "measured"
    assert measure.calls == 2
    assert tuned_plan(shapes, tmp_path, measure_fn=measure).source == "cache"


def test_an_unreadable_cache_file_is_measured_again(tmp_path):
    measure = FakeMeasure(ZEN3)
    tuned_plan(SHAPES, tmp_path, measure_fn=measure)
    for f in (tmp_path / "cpu-path").iterdir():
        f.write_text("{not json")
    plan = tuned_plan(SHAPES, tmp_path, measure_fn=measure)
    assert (plan.source, measure.calls, plan.decode.name) == ("measured", 2, "fp32")


def test_a_plan_measured_under_load_is_measured_again_when_the_machine_is_quieter(tmp_path, monkeypatch):
    measure = FakeMeasure(AVX512)
    monkeypatch.setattr(cpu_path, "machine_load", lambda: 9.0)
    assert tuned_plan(SHAPES, tmp_path, measure_fn=measure).load == 9.0
    assert tuned_plan(SHAPES, tmp_path, measure_fn=measure).source == "cache"  # still as busy: keep it
    monkeypatch.setattr(cpu_path, "machine_load", lambda: 0.5)
    assert tuned_plan(SHAPES, tmp_path, measure_fn=measure).source == "measured"
    assert tuned_plan(SHAPES, tmp_path, measure_fn=measure).source == "cache"
    assert measure.calls == 2


def test_busy_counts_the_measurements_own_threads_against_the_machines_cpus(tmp_path, monkeypatch):
    assert cpu_path.busy(2.34, 2, cpus=2)  # two other busy processes on a 2-CPU machine: no core left for 2 threads
    assert not cpu_path.busy(0.3, 2, cpus=2)
    assert not cpu_path.busy(2.34, 2, cpus=8)
    assert cpu_path.busy(6.0, 8, cpus=8)
    # The plan such a start measured is measured again at a quieter start.
    monkeypatch.setattr(cpu_path.os, "cpu_count", lambda: max(1, torch.get_num_threads()))
    measure = FakeMeasure(AVX512)
    monkeypatch.setattr(cpu_path, "machine_load", lambda: 0.1 + torch.get_num_threads() * 0.5)
    assert tuned_plan(SHAPES, tmp_path, measure_fn=measure).source == "measured"
    monkeypatch.setattr(cpu_path, "machine_load", lambda: 0.1)
    assert tuned_plan(SHAPES, tmp_path, measure_fn=measure).source == "measured"
    assert tuned_plan(SHAPES, tmp_path, measure_fn=measure).source == "cache"
    assert measure.calls == 2


def test_the_confirmation_falls_back_to_fp32_when_the_choice_is_not_faster(monkeypatch):
    from repocomplete.model_runtime.quantize import LinearPath

    ms = {"int8": 10.0, "fp32": 1.0, "bf16": 0.5}  # int8 measured fast by accident, slow when timed again
    timed = []

    class Weights:
        def __init__(self, form):
            self.form = form

        def matmul(self, x, act, small):
            timed.append(ms[self.form])

    def timer(fn, **kwargs):
        fn()
        return timed[-1]

    monkeypatch.setattr(cpu_path, "make_weights", lambda form, weight: Weights(form))
    monkeypatch.setattr(cpu_path, "_timer", timer)
    decode, prefill = REAL_CONFIRM(SHAPES, LinearPath.parse("int8/bf16"), LinearPath.parse("bf16"))
    assert (decode.name, prefill.name) == ("fp32", "bf16")


def test_measure_times_every_candidate_on_the_given_shapes():
    table = cpu_path.measure(SHAPES, decode_rows=(1, 4), prefill_rows=(32,))
    assert set(table["decode"]) >= {"fp32", "bf16", "int8/bf16"} and set(table["prefill"]) >= {"fp32", "bf16"}
    assert all(set(v) == {1, 4} and all(ms > 0 for ms in v.values()) for v in table["decode"].values())
    assert set(table["kv"]) == {"fp32", "bf16"}
    choose(table)  # whatever this machine measured, a choice comes out


# -- loading with a plan -----------------------------------------------------------------------------------------


def fixed_measure(monkeypatch, table):
    monkeypatch.setattr(cpu_path, "measure", FakeMeasure(table))


def reference_logits(tiny_model_dir, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(ids).logits[0]


@pytest.mark.parametrize("table, plan, tolerance", [
    (ZEN3, "decode fp32, prefill fp32, kv fp32", 1e-4),
    (AVX2_EMULATED, "decode int8/bf16, prefill fp32, kv fp32", 0.05),
    (AVX512, "decode int8/bf16, prefill bf16, kv fp32", 0.05),
])
def test_the_chosen_path_matches_the_float_reference(tiny_model_dir, tmp_path, monkeypatch, table, plan, tolerance):
    fixed_measure(monkeypatch, table)
    loaded = load_model(RuntimeConfig(model=str(tiny_model_dir), cache_dir=tmp_path, device="cpu"))
    assert loaded.plan.name == plan and loaded.plan.source == "measured"
    ids = torch.randint(100, 20000, (1, 40), generator=torch.Generator().manual_seed(3))
    expected = reference_logits(tiny_model_dir, ids)
    cache = SlabCache(loaded.n_layers, store_dtype=loaded.kv_dtype)
    with torch.inference_mode():
        prefill = loaded.forward(ids[:, :30], cache).float()  # 30 rows: the prefill path
        decode = [loaded.forward(ids[:, t : t + 1], cache).float() for t in range(30, 40)]  # the decode path
    torch.testing.assert_close(prefill, expected[29], rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(torch.stack(decode), expected[30:40], rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("quantize, dtype, decode, prefill, model_dtype", [
    ("none", None, "fp32", "fp32", torch.float32),
    ("none", "bfloat16", "bf16", "bf16", torch.bfloat16),
    ("int8", None, "int8/bf16", "int8/bf16", torch.bfloat16),
    ("int8", "float32", "int8/fp32", "int8/fp32", torch.float32),
])
def test_flags_override_the_measured_plan(tiny_model_dir, tmp_path, monkeypatch, quantize, dtype, decode, prefill,
                                          model_dtype):
    measure = FakeMeasure(AVX512)
    monkeypatch.setattr(cpu_path, "measure", measure)
    loaded = load_model(RuntimeConfig(model=str(tiny_model_dir), cache_dir=tmp_path, device="cpu", quantize=quantize,
                                      dtype=dtype))
    assert (loaded.plan.decode.name, loaded.plan.prefill.name, loaded.plan.source) == (decode, prefill, "flags")
    assert loaded.dtype == model_dtype and measure.calls == 0


def test_a_dtype_flag_with_auto_quantize_picks_among_that_dtype(tiny_model_dir, tmp_path, monkeypatch):
    fixed_measure(monkeypatch, AVX512)
    loaded = load_model(RuntimeConfig(model=str(tiny_model_dir), cache_dir=tmp_path, device="cpu", dtype="float32"))
    assert loaded.plan.name == "decode fp32, prefill fp32, kv fp32" and loaded.dtype == torch.float32


# -- threads ---------------------------------------------------------------------------------------------------


def test_cgroup_quota_in_cpus(tmp_path):
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/\n")
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(str(tmp_path), str(proc)) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(str(tmp_path), str(proc)) is None
    assert cgroup_cpu_limit(str(tmp_path / "missing"), str(tmp_path / "no-proc")) is None


def test_the_process_own_cgroup_and_its_parents_count(tmp_path):
    # cgroup v1: the process sits in cpu:/box/job; the job has no quota, the box has 2 CPUs.
    proc = tmp_path / "proc-cgroup"
    proc.write_text("4:memory:/box/job\n2:cpu,cpuacct:/box/job\n0::/\n")
    job = tmp_path / "cpu,cpuacct" / "box" / "job"
    job.mkdir(parents=True)
    (job / "cpu.cfs_quota_us").write_text("-1")
    (job / "cpu.cfs_period_us").write_text("100000")
    (job.parent / "cpu.cfs_quota_us").write_text("200000")
    (job.parent / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_limit(str(tmp_path), str(proc)) == 2.0
    (job / "cpu.cfs_quota_us").write_text("50000")  # the tighter one wins
    assert cgroup_cpu_limit(str(tmp_path), str(proc)) == 0.5
    # cgroup v2: /sys/fs/cgroup/<group>/cpu.max.
    proc.write_text("0::/user.slice/app\n")
    app = tmp_path / "user.slice" / "app"
    app.mkdir(parents=True)
    (app / "cpu.max").write_text("300000 100000\n")
    assert cgroup_cpu_limit(str(tmp_path), str(proc)) == 3.0


def test_smt_siblings_count_once(tmp_path):
    for cpu, core in ((0, 0), (1, 0), (2, 1), (3, 1)):  # two cores, two threads each
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(f"{core}\n")
    assert physical_cores({0, 1, 2, 3}, str(tmp_path)) == 2
    assert physical_cores({0, 1}, str(tmp_path)) == 1


def test_available_cores_is_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_mod.os, "sched_getaffinity", lambda pid: set(range(8)))
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/\n")
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert available_cores(str(tmp_path), str(tmp_path / "no-sysfs"), str(proc)) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cores(str(tmp_path), str(tmp_path / "no-sysfs"), str(proc)) == 8


# -- the time budget and chunked prefill ---------------------------------------------------------------------------


class SlowForward:
    """Wraps a forward: prefill calls (more than one row) sleep, and a hook runs after each."""

    def __init__(self, forward, sleep_s=0.0, after=None):
        self.forward, self.sleep_s, self.after, self.prefill_rows = forward, sleep_s, after, []

    def __call__(self, ids, cache, all_logits=False):
        out = self.forward(ids, cache, all_logits=all_logits)
        if ids.shape[1] > 1 and not all_logits:  # a prefill (not a speculative draft being verified)
            self.prefill_rows.append(ids.shape[1])
            time.sleep(self.sleep_s)
            if self.after:
                self.after()
        return out


def long_prefix(n_lines=60):
    return "".join(f"value_{i} = compute({i}, 'text')\n" for i in range(n_lines)) + "x = "


def test_a_slow_prefill_does_not_eat_the_decode_budget(tiny_loaded, tiny_config):
    # The prefill alone outlasts the budget; the budget is wide enough for a loaded machine to decode in it (a
    # clean-clone run here saw 0.3 s run out on the tiny model's decoding while other jobs shared its two cores).
    engine = Engine(tiny_loaded, tiny_config.replace(token_healing=False, time_budget_s=2.0, max_new_tokens=5))
    engine.forward = SlowForward(engine.forward, sleep_s=2.5)
    result = engine.complete(CompletionRequest(PromptParts(long_prefix()), multiline=True))
    assert result.prefill_s >= 2.5
    assert result.stop_reason != "time" and result.generated_tokens > 1


def test_a_cancelled_cold_prefill_is_resumed_from_its_chunks(tiny_loaded, tiny_config):
    engine = Engine(tiny_loaded, tiny_config.replace(token_healing=False, prefill_chunk_tokens=128, max_new_tokens=3))
    cancel = CancelToken()
    slow = SlowForward(engine.forward, after=cancel.cancel)
    engine.forward = slow
    parts = PromptParts(long_prefix())
    first = engine.complete(CompletionRequest(parts, cancel=cancel))
    assert (first.stop_reason, first.text, slow.prefill_rows) == ("cancelled", "", [128])
    second = engine.complete(CompletionRequest(parts))
    assert second.cached_tokens == 128  # the chunk done before the cancel
    resumed = slow.prefill_rows[1:]
    assert all(rows == 128 for rows in resumed[:-1]) and sum(resumed) == second.prompt_tokens - 128
    fresh = Engine(tiny_loaded, tiny_config.replace(token_healing=False, prefill_chunk_tokens=128, max_new_tokens=3))
    assert second.text == fresh.complete(CompletionRequest(parts)).text


# -- repocomplete doctor ---------------------------------------------------------------------------------------


def test_doctor_prints_the_capability_the_table_and_the_choice(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import repocomplete.model_runtime.config as config_mod
    from repocomplete.cli import main

    monkeypatch.setattr(config_mod, "default_cache_dir", lambda: tmp_path)
    fixed_measure(monkeypatch, AVX2_EMULATED)
    assert main(["doctor", "--model", str(tiny_model_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    capability = torch.backends.cpu.get_cpu_capability()
    assert lines[1].startswith(f"isa      torch capability {capability}; flags ")
    assert lines[5].startswith("plan     decode int8/bf16, prefill fp32, kv fp32 (measured now in ")
    # AVX2: bf16 GEMMs lose, so sparse attention keeps float32 K/V
    assert lines[6] == ("attention auto: sparse for positions from 4096 on (top 16 context blocks per K/V head), "
                        "K/V in float32 there")
    decode = lines.index(next(l for l in lines if l.startswith("decode (ms")))
    prefill = lines.index(next(l for l in lines if l.startswith("prefill (ms")))
    assert [l.split()[1] for l in lines[decode + 1 : prefill] if l.startswith("  *")] == ["int8/bf16"]
    assert [l.split()[1] for l in lines[prefill + 1 :] if l.startswith("  *")] == ["fp32"]
    assert "*fp32 3.480, bf16 26.780" in "\n".join(lines)

    assert main(["doctor", "--model", str(tiny_model_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plan"]["source"] == "cache" and report["plan"]["table"]["kv"] == AVX2_EMULATED["kv"]
    assert (report["plan"]["decode"], report["plan"]["prefill"]) == ("int8/bf16", "fp32")
    assert report["cpu"]["capability"] == capability and report["threads"]["used"] >= 1
    assert report["cache_file"].startswith(str(tmp_path / "cpu-path"))
    assert report["attention"] == {"mode": "auto", "sparse_min_tokens": 4096, "sparse_top_k": 16,
                                   "sparse_kv_dtype": "float32"}
