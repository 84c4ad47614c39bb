from kioskd.cli import main

raise SystemExit(main())
