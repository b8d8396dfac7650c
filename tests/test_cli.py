from mocobench.cli import SUBCOMMANDS


def test_help_lists_every_subcommand(cli):
    out = cli("--help")
    assert out.returncode == 0, out.stderr
    for name in SUBCOMMANDS:
        assert name in out.stdout


def test_every_subcommand_has_help(cli):
    for name in SUBCOMMANDS:
        out = cli(name, "--help")
        assert out.returncode == 0, (name, out.stderr)
        assert "usage: mocobench " + name in out.stdout
