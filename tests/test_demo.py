"""The main job on the real offline weights (Whisper base -> tiny.en) and the real held-out clips."""
import json

import jiwer
import pytest

from rc_nbkit.demo import demo_command
from rc_nbkit.trainer import load_metrics


def check_report(run_dir, steps):
    report = json.loads((run_dir / "report.json").read_text())
    names = [result["name"] for result in report["results"]]
    assert len(names) == 3
    assert "zero-shot" in names[1]
    assert "distilled" in names[2]
    for result in report["results"]:
        scores = result["scores"]["normalised"]
        utterances = result["scores"]["utterances"]
        # Independent oracle: jiwer on the normalised strings the report lists.
        references = [entry["reference_normalised"] for entry in utterances]
        hypotheses = [entry["hypothesis_normalised"] for entry in utterances]
        assert scores["wer"] == pytest.approx(jiwer.wer(references, hypotheses), abs=1e-12)
        assert result["speed"]["rtfx"] > 0
    verdict = report["verdict"]
    assert verdict["outcome"] in {"helped", "no change", "hurt"}
    assert verdict["sentence"] in (run_dir / "report.md").read_text()
    assert report["training"]["steps"] == steps
    assert 0 < report["parameters"]["trainable"] < report["parameters"]["student"]
    assert 0 < report["parameters"]["cr_train"] < 1
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    steps_logged = [record for record in load_metrics(run_dir) if record["type"] == "step"]
    assert len(steps_logged) == steps
    assert all(record["terms"]["kl"] is not None for record in steps_logged)
    return report


def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    run_dir = tmp_path / "demo"
    assert demo_command(["--quick", "--output-dir", str(run_dir)]) == 0
    report = check_report(run_dir, steps=2)
    assert report["evaluation"]["utterances"] == 2
    # The real teacher transcribes the real LibriVox clips well; a broken conversion or feature path would not.
    assert report["results"][0]["scores"]["normalised"]["wer"] < 0.3
    assert "Distillation" in capsys.readouterr().out


@pytest.mark.slow
def test_full_demo(tmp_path):
    run_dir = tmp_path / "demo"
    assert demo_command(["--output-dir", str(run_dir)]) == 0
    report = check_report(run_dir, steps=json.loads((run_dir / "report.json").read_text())["config"]["train"]["total_steps"])
    assert report["evaluation"]["utterances"] == 10


def test_distill_command_stops_and_resumes(tmp_path):
    from rc_nbkit.trainer import distill_command, latest_checkpoint

    run_dir = tmp_path / "run"
    arguments = ["--config", "demo", "--output-dir", str(run_dir), "--set", "train.total_steps=2", "--set", "data.batch_size=1",
                 "--set", "data.max_train_items=2", "--set", "train.progress_bar=false"]
    assert distill_command(arguments + ["--max-steps", "1"]) == 0
    assert latest_checkpoint(run_dir).name == "step-0000001"
    assert distill_command(arguments + ["--resume"]) == 0
    assert latest_checkpoint(run_dir).name == "step-0000002"
    steps = [record["step"] for record in load_metrics(run_dir) if record["type"] == "step"]
    assert steps == [1, 2]
    assert [record["reason"] for record in load_metrics(run_dir) if record["type"] == "end"] == ["max_steps", "finished"]


def test_distill_command_rejects_unknown_key(tmp_path):
    from rc_nbkit.trainer import distill_command

    with pytest.raises(SystemExit) as error:
        distill_command(["--config", "demo", "--set", "optim.learning_rate=1"])
    assert error.value.code == 2
