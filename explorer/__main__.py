import sys

from explorer.app.cli import main

sys.exit(main())
