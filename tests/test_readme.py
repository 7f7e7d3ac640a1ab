"""The README's commands and examples stay true."""

import re
import subprocess
import sys
from pathlib import Path

README = Path("README.md").read_text()


def test_swap_example_in_readme_is_what_distill_swap_prints():
    block = re.search(r"echo \"(.+)\" \| distill swap\n# (.+)\n", README)
    out = subprocess.run([sys.executable, "-m", "distill", "swap"], input=block[1] + "\n", capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == block[2].strip()


def test_every_recipe_and_make_target_named_in_readme_exists():
    for recipe in set(re.findall(r"recipes/[\w.]+\.yaml", README)):
        assert Path(recipe).is_file(), recipe
    makefile = Path("Makefile").read_text()
    for target in set(re.findall(r"(?:^|`)make ([a-z-]+)", README, re.M)):
        assert re.search(rf"^{target}:", makefile, re.M), target


def test_help_recipe_lists_keys():
    out = subprocess.run([sys.executable, "-m", "distill", "train", "--recipe", "x", "--help-recipe"],
                         capture_output=True, text=True, check=True).stdout
    assert "train.max_steps" in out and "crr.teacher" in out
