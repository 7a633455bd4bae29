"""How `twinhub up` turns its config file and command line into one configuration."""

from __future__ import annotations

import json

import pytest

from twinhub.cli import CLIError, _overrides, build_parser
from twinhub.platform import load_config


def resolve(tmp_path, argv, config_text=None):
    if config_text is not None:
        (tmp_path / "twinhub_config.py").write_text(config_text)
    args, extra = build_parser().parse_known_args(["up", *argv])
    return load_config(tmp_path, _overrides(args, extra))


def test_stac_source_flags_extend_the_config_files_sources(tmp_path):
    cfg = resolve(
        tmp_path,
        ["--stac-source", "b=http://h2:8080/catalog.json", "--stac-source", "c=https://h3/stac"],
        "c.TwinhubDataLake.sources = [{'name': 'a', 'url': 'http://h1/'}]\n",
    )
    assert [s["name"] for s in cfg.TwinhubDataLake.sources] == ["a", "b", "c"]


def test_values_are_plain_json_for_every_process(tmp_path):
    # what runtime.json stores: no lazy or not-yet-parsed values left
    cfg = resolve(
        tmp_path,
        ["--stac-source", "b=http://h2/", "--TwinhubDataLake.enabled=False"],
        "c.TwinhubDataLake.sources.append({'name': 'a', 'url': 'http://h1/'})\n",
    )
    doc = json.loads(json.dumps(cfg))
    assert doc["TwinhubDataLake"] == {
        "enabled": False,
        "sources": [{"name": "a", "url": "http://h1/"}, {"name": "b", "url": "http://h2/"}],
    }


@pytest.mark.parametrize("arg", ["nameonly", "=http://h/", "x=ftp://h/", "LOCAL=http://h/"])
def test_a_malformed_stac_source_is_a_cli_error(tmp_path, arg):
    with pytest.raises(CLIError, match="source|URL|http"):
        resolve(tmp_path, ["--stac-source", arg])
