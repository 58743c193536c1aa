import sys

from .cli import main_argv

raise SystemExit(main_argv(sys.argv[1:]))
