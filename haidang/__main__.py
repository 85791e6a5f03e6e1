import sys

from haidang.cli import main

sys.exit(main())
