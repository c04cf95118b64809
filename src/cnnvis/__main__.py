from cnnvis.cli import main

raise SystemExit(main())
