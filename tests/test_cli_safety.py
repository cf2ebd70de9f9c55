"""Options, outputs and checkpoints checked before any fit; hints that name the interface in use."""

from __future__ import annotations

from clusterlmer._checks import called_from_cli, option_hint


def test_option_hint_names_the_cli_flag_under_the_cli():
    python, cli = "schemes={'region': 'none'}", "--scheme region=none"
    assert option_hint(python, cli) == "schemes={'region': 'none'} (CLI: --scheme region=none)"
    with called_from_cli():
        assert option_hint(python, cli) == "--scheme region=none"
        assert option_hint("optimizer_options={...}") == "optimizer_options={...}"  # no CLI flag: Python form
    assert option_hint(python, cli).startswith("schemes=")  # the flag is reset after the block
