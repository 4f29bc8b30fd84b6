from agentriver.cli import main

raise SystemExit(main())
