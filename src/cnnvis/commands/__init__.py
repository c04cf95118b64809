"""CLI sub-commands: each module defines click commands and lists them in COMMANDS."""
