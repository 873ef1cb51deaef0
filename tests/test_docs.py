"""The README and docs/ point at files that exist, and the training key table covers every key."""
import os
import re

import pytest

from conftest import ROOT

PAGES = ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs")))
                         if f.endswith(".md")]


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    text = open(os.path.join(ROOT, page), encoding="utf-8").read()
    targets = [t for t in re.findall(r"\]\(([^)#\s]+)\)", text) if "://" not in t]
    assert targets or page != "README.md"
    missing = [t for t in targets if not os.path.exists(os.path.join(ROOT, os.path.dirname(page), t))]
    assert not missing, f"{page} links to missing files: {missing}"


def test_the_training_key_table_names_every_key():
    import train
    table = open(os.path.join(ROOT, "docs", "training.md"), encoding="utf-8").read().split("## Keys", 1)[1]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    documented = {k.strip() for row in rows for k in row.split(",")}
    assert set(train.TrainConfig.__dataclass_fields__) - documented == set()
