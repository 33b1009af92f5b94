"""The argument parser of every command: a bad flag is one `error:` line and exit 2, like the other user errors.
Its own module, without JAX, so that the launcher starts in a fraction of a second."""
import argparse


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message}\n")
