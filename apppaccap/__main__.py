from apppaccap.cli import main

raise SystemExit(main())
