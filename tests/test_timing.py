"""The demo's step timings (`python -m distill.timing`): the log, the table, its JSON keys, the Makefile's use."""

import json
import re
import sys
from pathlib import Path

from distill import timing


def _step(log, name, code="pass", new=False):
    argv = ["run", "--log", str(log), "--name", name] + (["--new"] if new else [])
    return timing.main(argv + ["--", sys.executable, "-c", code])


def test_steps_are_logged_and_tabled_with_their_keys(tmp_path, capsys):
    log, out = tmp_path / "runs" / "timings.jsonl", tmp_path / "demo" / "timings.json"
    log.parent.mkdir()
    log.write_text('{"name": "from an earlier demo", "seconds": 1.0, "exit_code": 0, "command": ["x"]}\n')
    assert _step(log, "corpus", new=True) == 0
    assert _step(log, "train kd", "import sys; sys.exit(3)") == 3  # the command's own exit status
    assert timing.main(["table", str(log), "--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in printed[:4]] == ["step", "corpus", "train", "total"]
    assert "exit status 3" in printed[2]
    result = json.loads(out.read_text())
    assert set(result) == {"steps", "total_seconds", "machine"}
    assert [s["name"] for s in result["steps"]] == ["corpus", "train kd"]  # --new dropped the earlier demo
    for step in result["steps"]:
        assert set(step) == {"name", "seconds", "exit_code", "command"}
        assert step["seconds"] >= 0 and step["command"][0] == sys.executable
    assert [s["exit_code"] for s in result["steps"]] == [0, 3]
    assert result["total_seconds"] == round(sum(s["seconds"] for s in result["steps"]), 1)
    assert set(result["machine"]) == {"cpus", "cpu_capability"}


def test_a_missing_log_or_command_is_one_line(tmp_path, capsys):
    assert timing.main(["table", str(tmp_path / "none.jsonl")]) == 2
    assert "no step log" in capsys.readouterr().err
    assert timing.main(["run", "--log", str(tmp_path / "t.jsonl"), "--name", "x", "--",
                        str(tmp_path / "no-such-program")]) == 127
    assert "cannot run" in capsys.readouterr().err


def test_every_demo_step_is_timed_and_the_table_ends_the_demo():
    makefile = Path(__file__).resolve().parents[1].joinpath("Makefile").read_text()
    recipe = re.search(r"^demo: .*?\n((?:\t.*\n)+)", makefile, re.M)[1]
    lines = [ln.strip() for ln in recipe.replace("\\\n", " ").splitlines()]
    names = [re.match(r'\$\(TIMED\) ("[^"]+"|\S+)', ln)[1].strip('"') for ln in lines[:-1]]
    assert names == ["corpus", "train kd", "train crr", "eval", "samples"]
    assert all(" -- distill " in ln for ln in lines[:-1])  # after the prefix, a plain distill command
    assert lines[-1] == "$(PY) -m distill.timing table $(DEMO_TIMINGS) --json $(DEMO_OUT)/timings.json"
