"""The global remote-control options accept values that look like options."""

from __future__ import annotations

from spear_actors.cli import build_parser, join_option_values

DASH_KEY = "-" + "a" * 39  # a Z85 public key may start with '-'


def test_a_server_key_starting_with_a_dash_is_taken_as_the_value() -> None:
    argv = ["--endpoint", "tcp://10.0.0.5:7400", "--server-key", DASH_KEY,
            "--client-key-file", "op.key_secret", "status", "--timeout", "5"]
    args = build_parser().parse_args(join_option_values(argv))
    assert args.server_key == DASH_KEY
    assert args.endpoint == "tcp://10.0.0.5:7400"
    assert args.client_key_file == "op.key_secret"
    assert args.command == "status"


def test_only_global_options_before_the_command_are_joined() -> None:
    argv = ["--server-key=K", "execute", "echo", "--server-key", "-x"]
    assert join_option_values(argv) == argv
    assert join_option_values(["--version"]) == ["--version"]
    assert join_option_values(["--server-key"]) == ["--server-key"]  # argparse says what lacks
