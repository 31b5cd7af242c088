import sys

from edge_agent.main import main

sys.exit(main())
