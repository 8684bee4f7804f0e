"""`python -m spec_whisper_client` is the same as the `spec-whisper` command."""

import sys

from .cli import main

sys.exit(main())
