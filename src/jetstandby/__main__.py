from jetstandby.cli import main

raise SystemExit(main())
