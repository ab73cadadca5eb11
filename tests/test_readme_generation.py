"""README's generation commands, run as written on a text with blank lines.

The commands are read from README's "Generation and scoring" section and run by bash in a scratch
directory laid out as README assumes (``data_scripts``, ``data/my_corpus``,
``checkpoints/my_corpus_stateful``), so a README edit that breaks them fails here. Substitutions:
``--user-dir fairseq_srupp`` points at this checkout's plugin and the programs are called by
their path (see :func:`run_shell`); ``fairseq-generate`` runs with ``--max-len-b 48``
instead of 200, for time (beam 5 over every test line); ``srupp-sample`` becomes
``python -m fairseq_srupp.sample_cli`` where the console script is not installed yet. The checkpoint is a tiny model trained for a few updates.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_utils import BIN, STATEFUL_TRAIN_ARGS, USER_DIR, run_tool, synthetic_text

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("fairseq-interactive", "fairseq-generate", "srupp-sample")


def readme_commands(section="## Generation and scoring"):
    """{tool: command} for the README's bash commands of ``section`` (continuation lines joined)."""
    text = (REPO / "README.md").read_text()
    body = text[text.index(section):]
    body = body[:body.index("\n## ", 1)]
    commands = {}
    for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            tool = command.split()[0] if command.strip() else ""
            if tool in TOOLS:
                commands[tool] = command
    assert sorted(commands) == sorted(TOOLS), commands
    return commands


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory):
    """A scratch directory with README's layout: data with blank lines and a trained checkpoint."""
    root = tmp_path_factory.mktemp("readme")
    (root / "data_scripts").symlink_to(REPO / "data_scripts")
    lines = synthetic_text(10000).decode().splitlines()
    text = "\n".join(line if i % 6 else line + "\n" for i, line in enumerate(lines)) + "\n"  # blank lines
    (root / "my_corpus.txt").write_text(text)
    run_shell("python data_scripts/prepare_char_text.py --text my_corpus.txt --out data/my_corpus", root)
    save_dir = root / "checkpoints" / "my_corpus_stateful"
    run_tool("fairseq-train", root / "data/my_corpus/data-bin", *STATEFUL_TRAIN_ARGS, "--batch-size", 4,
             "--max-update", 30, "--lr", 0.01, "--disable-validation", "--save-dir", save_dir,
             "--bpe", "srupp_bytes")
    shutil.copy(save_dir / "checkpoint_last.pt", save_dir / "checkpoint_best.pt")
    return root


def run_shell(command, cwd, stdin=None, stderr=subprocess.STDOUT):
    """Run a README command with bash. Its programs are called by their path in this interpreter's
    bin/, so PATH stays as the other CLI tests have it (the C++ extension's build depends on PATH)."""
    command = command.replace("--user-dir fairseq_srupp", "--user-dir " + USER_DIR)
    if not (BIN / "srupp-sample").exists():
        command = re.sub(r"^srupp-sample\b", "python -m fairseq_srupp.sample_cli", command)
    command = re.sub(r"^(fairseq-[a-z-]+|srupp-sample|python)\b", lambda m: str(BIN / m.group(1)), command)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, input=stdin, text=True, timeout=600,
                          stdout=subprocess.PIPE, stderr=stderr)
    assert proc.returncode == 0, "{}\n{}".format(command, proc.stdout[-5000:])
    return proc.stdout


def test_readme_generate_on_text_with_blank_lines(readme_dir):
    command = readme_commands()["fairseq-generate"]
    assert "--max-len-b 200" in command
    out = run_shell(command.replace("--max-len-b 200", "--max-len-b 48"), readme_dir)
    refs = {int(i): text for i, text in re.findall(r"^T-(\d+)\t(.*)$", out, flags=re.M)}
    hyps = {int(i): text for i, text in re.findall(r"^D-(\d+)\t\S+\t(.*)$", out, flags=re.M)}
    test_lines = (readme_dir / "data/my_corpus/test.tokens").read_text().splitlines()
    assert sorted(hyps) == sorted(refs) and len(hyps) == len(test_lines)
    blank = [i for i, ref in refs.items() if ref == ""]
    assert blank, "the test split should hold blank lines"
    for i, ref in refs.items():
        if len(ref.encode()) < 16:  # the line ends inside the forced prefix: it comes back unchanged
            assert hyps[i] == ref
        else:
            assert hyps[i].encode()[:16] == ref.encode()[:16]
    assert any(len(hyps[i]) > 16 and hyps[i] != refs[i] for i in hyps)  # real continuations


def test_readme_interactive_continues_prompts_and_warns_on_long_ones(readme_dir):
    long_prompt = ("the cat sees the moon. " * 10).strip()  # 229 bytes: more than --max-len-b 200
    out = run_shell(readme_commands()["fairseq-interactive"], readme_dir,
                    stdin="the cat\n\n{}\na dog\n".format(long_prompt))
    hyps = {}
    for i, text in re.findall(r"^D-(\d+)\t\S+\t(.*)$", out, flags=re.M):
        hyps.setdefault(int(i), []).append(text)
    assert sorted(hyps) == [0, 1, 2, 3]
    for i, prompt in ((0, "the cat"), (3, "a dog")):
        assert len(hyps[i]) == 2  # --nbest 2
        assert all(h.startswith(prompt) and len(h) > len(prompt) for h in hyps[i])
    assert all(long_prompt.startswith(h) and len(h.encode()) <= 200 for h in hyps[2])  # cut at the limit
    assert "a prompt of 229 tokens reaches the length limit of 200 tokens" in out
    assert out.count("reaches the length limit") == 1


def test_readme_srupp_sample(readme_dir):
    out = run_shell(readme_commands()["srupp-sample"], readme_dir, stderr=subprocess.PIPE)
    assert out.startswith("ROMEO:") and len(out.encode()) == len("ROMEO:") + 500 + 1
    assert "\n" in out[:-1]  # it writes across lines
