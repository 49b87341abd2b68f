import json
from pathlib import Path

import pytest

from locolib.io import atomic_write_bytes, read_json, write_json
from locolib.notebook import choose_profile, colab_cell_source, is_colab_cell

ROOT = Path(__file__).resolve().parents[1]


def test_choose_profile_returns_a_copy_and_names_the_choices():
    profiles = {"smoke": {"n": 1}, "default": {"n": 100}}
    cfg = choose_profile(profiles, "smoke")
    cfg["n"] = 5
    assert profiles["smoke"]["n"] == 1
    with pytest.raises(ValueError, match=r"unknown profile 'gpu'.*\['default', 'smoke'\]"):
        choose_profile(profiles, "gpu")


def test_colab_cell_installs_the_configured_repository_only_in_colab():
    source = colab_cell_source(ROOT / "_config.yml")
    config = (ROOT / "_config.yml").read_text()
    assert is_colab_cell(source)
    url = source.split("git+")[1].split("@")[0]
    assert f"url: {url}" in config
    assert '"google.colab" in sys.modules' in source
    # Outside Colab the cell is plain Python that does nothing.
    namespace: dict = {}
    exec(compile(source.replace("%pip", "raise SystemExit  #"), "<colab>", "exec"), namespace)


def test_atomic_writes_leave_no_partial_file(tmp_path: Path):
    target = tmp_path / "sub" / "x.json"
    write_json(target, {"b": 1, "a": [1, 2]})
    assert read_json(target) == {"a": [1, 2], "b": 1}


    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]
