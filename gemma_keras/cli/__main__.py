import sys

from gemma_keras.cli.commands import main

sys.exit(main())
