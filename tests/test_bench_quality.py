"""`repocomplete bench quality`: tasks cut by the suite builder, run through eval's runner, scored by eval's metrics."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from repocomplete.bench.quality import CONFIGURATIONS, format_report, quality_tasks, run_quality
from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.engine import ContextEngine
from repocomplete.eval.metrics import score
from helpers import write_tree
from repocomplete.model_runtime.engine import Engine
from repocomplete.cli import main
from test_build_suite import REPO
from test_eval_runner import Recorder


class Answers(Recorder):
    """The Recorder, keeping each request's completion too."""

    def __init__(self, engine):
        super().__init__(engine)
        self.answers = []

    def complete_batch(self, requests):
        done = super().complete_batch(requests)
        self.answers.extend(zip(requests, done))
        return done


def _thread_jedi(root, cfg):
    return ContextEngine(root, cfg, slow_executor=ThreadPoolExecutor(1))


def test_quality_runs_every_configuration_through_the_runner_and_scores_with_the_metrics(
        tmp_path, tiny_loaded, tiny_config):
    repo = write_tree(tmp_path / "demo", REPO)
    runtime = tiny_config.replace(max_new_tokens=6)
    model = Answers(Engine(tiny_loaded, runtime))
    config = ContextConfig(index_dir=tmp_path / "index")
    report = run_quality(repo, runtime, model=model, n=4, seed=1, budget=128, progress=False, config=config,
                         make_context_engine=_thread_jedi)
    tasks = quality_tasks(repo.resolve(), config, 4, seed=1)
    assert report["tasks"] == len(tasks) >= 3 and report["model"] == model.name
    assert (report["seed"], report["budget"], report["source"]) == (1, 128, str(repo))
    assert list(report["results"]) == list(CONFIGURATIONS)
    assert len(model.answers) == len(CONFIGURATIONS) * len(tasks)
    by_prompt = {t.prompt + "\0" + t.right_context: t for t in tasks}
    for k, name in enumerate(CONFIGURATIONS):
        answers = model.answers[k * len(tasks) : (k + 1) * len(tasks)]
        # the task's own buffer (the target removed) at the cursor: nothing else, nothing of the target
        ran = [by_prompt[r.parts.prefix + "\0" + r.parts.suffix] for r, _ in answers]
        assert sorted(t.task_id for t in ran) == sorted(t.task_id for t in tasks)
        if name == "infile":
            assert not any(r.parts.context for r, _ in answers)
        if name == "repo":
            assert any(r.parts.context for r, _ in answers)  # repository context did reach the prompts
        expected = score(tasks, {t.task_id: c.text for t, (_, c) in zip(ran, answers)})["overall"]
        row = report["results"][name]
        assert row["n"] == len(tasks)
        assert row["exact_match"] == round(expected["em"], 1)
        assert row["edit_similarity"] == round(expected["es"], 1)
        assert row["mean_latency_s"] >= 0
    assert report["repo_minus_infile_es"] == round(
        report["results"]["repo"]["edit_similarity"] - report["results"]["infile"]["edit_similarity"], 1)
    text = format_report(report)
    assert "line completions cut from" in text and all(f"\n{name} " in text for name in CONFIGURATIONS)


def test_cli_bench_quality(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setattr("repocomplete.context_engine.config.default_index_dir", lambda: tmp_path / "index")
    repo = write_tree(tmp_path / "demo", REPO)
    model = ["--model", str(tiny_model_dir), "--quantize", "none", "--max-tokens", "3"]
    assert main(["bench", "quality", str(tmp_path / "nope"), *model]) == 2
    assert capsys.readouterr().err == f"repocomplete: not a directory: {tmp_path / 'nope'}\n"
    assert main(["bench", "quality", str(repo), "--n", "2", "--json", *model]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tasks"] == 2 and list(report["results"]) == list(CONFIGURATIONS)
    assert all(row["n"] == 2 for row in report["results"].values())
