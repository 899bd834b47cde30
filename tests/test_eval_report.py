"""The ablation report: every configuration run (resumably) and scored; report.md, report.png, report.json."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.errors import InputError
from repocomplete.context_engine.engine import ContextEngine
from repocomplete.eval.report import CONFIGS, configure, parse_configs, run_report
from repocomplete.eval.options import RunOptions
from repocomplete.eval.suites import load_tasks
from repocomplete.model_runtime.engine import Engine
from test_eval_runner import Recorder, suite  # noqa: F401 - the shared tiny suite


def _thread_jedi(root, cfg):
    return ContextEngine(root, cfg, slow_executor=ThreadPoolExecutor(1))


def test_report_runs_every_configuration_and_writes_md_png_json(suite, tmp_path, tiny_loaded, tiny_config):  # noqa: F811
    tasks_path, repos = suite
    tasks = load_tasks(tasks_path)
    runtime = tiny_config.replace(max_new_tokens=6)
    recorder = Recorder(Engine(tiny_loaded, runtime))
    out = tmp_path / "report"
    context = ContextConfig(index_dir=tmp_path / "index")
    report = run_report(tasks, repos, out, runtime, context, RunOptions(budget=128, limit=4, progress=False),
                        parse_configs(None, None), suite=str(tasks_path), model=recorder,
                        make_context_engine=_thread_jedi)
    assert list(report["configs"]) == ["none", "infile", "imports", "typed_holes", "retrieval", "repo_map",
                                       "outline", "neighbours", "repo"]
    assert len(recorder.requests) == 9 * 4
    for name, row in report["configs"].items():
        assert row["n"] == 4 and row["missing"] == 0
        assert len((out / f"pred-{name}.jsonl").read_text().splitlines()) == 4
        assert 0 <= row["es"] <= 100 and row["latency_ms_mean"] > 0
    # The configurations are what they say: no context at all, the suffix, one provider's records.
    by_config = [recorder.requests[k * 4 : (k + 1) * 4] for k in range(9)]
    assert all(r.parts.suffix == "" and not r.parts.context for r in by_config[0])
    assert all(r.parts.suffix and not r.parts.context for r in by_config[1])
    retrieval = [item for r in by_config[4] for item in r.parts.context]
    assert retrieval and all(r.parts.context for r in by_config[8])
    md = (out / "report.md").read_text()
    assert f"suite: `{tasks_path}`, 4 tasks" in md and "budget: 128 tokens" in md and "commit `" in md
    table = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| configuration")]
    assert [line.split(" | ")[0][2:] for line in table] == list(CONFIGS)
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "report.json").read_text())
    assert saved["header"]["tasks"] == 4 and saved["configs"]["repo"]["es"] == report["configs"]["repo"]["es"]
    # Again: every configuration is finished, nothing runs, the same numbers come out.
    again = Recorder(Engine(tiny_loaded, runtime))
    second = run_report(tasks, repos, out, runtime, context, RunOptions(budget=128, limit=4, progress=False),
                        parse_configs(None, None), suite=str(tasks_path), model=again,
                        make_context_engine=_thread_jedi)
    assert again.requests == [] and second["configs"] == report["configs"]


def _make_adapter(tiny_model_dir, path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero (a no-op adapter); make it do something
                param.normal_(0, 0.5)
    model.save_pretrained(path)
    return path


def test_report_with_an_adapter_runs_both_models(suite, tmp_path, tiny_model_dir, tiny_config):  # noqa: F811
    tasks_path, repos = suite
    tasks = load_tasks(tasks_path)
    adapter = _make_adapter(tiny_model_dir, tmp_path / "lora")
    runtime = tiny_config.replace(max_new_tokens=6, adapter=str(adapter))
    configs = parse_configs(None, str(adapter))
    assert configs[-2:] == ["infile+adapter", "repo+adapter"]
    report = run_report(tasks, repos, tmp_path / "out", runtime, ContextConfig(index_dir=tmp_path / "index"),
                        RunOptions(progress=False), ["infile", "infile+adapter"], make_context_engine=_thread_jedi)
    meta = {name: json.loads((tmp_path / "out" / f"pred-{name}.jsonl.meta.json").read_text())["settings"]
            for name in report["configs"]}
    assert meta["infile"]["adapter"] is None and meta["infile+adapter"]["adapter"] == str(adapter)
    preds = {name: (tmp_path / "out" / f"pred-{name}.jsonl").read_text() for name in report["configs"]}
    assert preds["infile"] != preds["infile+adapter"]  # the adapter did change the model
    assert "+ adapter" in (tmp_path / "out" / "report.md").read_text()


def test_configurations():
    assert parse_configs("infile,repo", None) == ["infile", "repo"]
    for bad, message in (("everything", "unknown configuration"), ("repo+adapter", "needs --adapter"),
                         ("repo,repo", "named twice"), ("repo+lora", "unknown configuration")):
        with pytest.raises(InputError, match=message):
            parse_configs(bad, None)
    from repocomplete.model_runtime.config import RuntimeConfig

    runtime, context, options = RuntimeConfig(adapter="lora"), ContextConfig(), RunOptions(context="infile")
    rt, ctx, opts = configure("retrieval", runtime, context, options)
    assert (rt.adapter, ctx.providers, opts.context) == (None, ("retrieval",), "repo")
    rt, ctx, opts = configure("repo+adapter", runtime, context, options)
    assert (rt.adapter, ctx.providers, opts.context) == ("lora", context.providers, "repo")
    assert configure("none", runtime, context, options)[2].context == "none"


def test_a_shard_cannot_make_a_report(suite, tmp_path, tiny_config):  # noqa: F811
    tasks_path, repos = suite
    with pytest.raises(InputError, match="whole suite"):
        run_report(load_tasks(tasks_path), repos, tmp_path / "out", tiny_config, ContextConfig(),
                   RunOptions(shard=(0, 2)), ["infile"])


def test_cli_report_and_merge(suite, tmp_path, tiny_model_dir, capsys):  # noqa: F811
    from repocomplete.cli import main

    tasks_path, repos = suite
    model = ["--model", str(tiny_model_dir), "--quantize", "none", "--max-tokens", "4"]
    out = tmp_path / "report"
    assert main(["eval", "report", "--tasks", str(tasks_path), "--repos", str(repos), "--out-dir", str(out),
                 "--configs", "none,infile", "--limit", "3", "--quiet", *model]) == 0
    printed = capsys.readouterr().out
    assert "| none | 3 |" in printed and "| infile | 3 |" in printed
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".meta.json")) == [
        "pred-infile.jsonl", "pred-none.jsonl", "report.json", "report.md", "report.png"]
    assert main(["eval", "report", "--tasks", str(tasks_path), "--repos", str(repos), "--out-dir", str(out),
                 "--configs", "repo+adapter", *model]) == 2
    assert "needs --adapter" in capsys.readouterr().err
    parts = [str(tmp_path / f"s{i}.jsonl") for i in range(2)]
    for i, part in enumerate(parts):
        assert main(["eval", "run", "--tasks", str(tasks_path), "--repos", str(repos), "--out", part, "--context",
                     "none", "--shard", f"{i}/2", "--quiet", *model]) == 0
    assert main(["eval", "merge", "--tasks", str(tasks_path), "--out", str(tmp_path / "m.jsonl"), *parts]) == 0
    assert (tmp_path / "m.jsonl").read_text().count("\n") == 6
