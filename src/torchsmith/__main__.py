from torchsmith.cli.main import main

raise SystemExit(main())
