from hhalign.cli import main

raise SystemExit(main())
