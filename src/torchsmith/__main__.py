from torchsmith.cli.main import run

raise SystemExit(run())
