"""`python -m mrictl` is the `mrictl` command."""

from mrictl.cli.main import main

main()
