"""``python -m bids_synth`` runs the command line."""

from .cli.run import main

if __name__ == '__main__':
    main()
