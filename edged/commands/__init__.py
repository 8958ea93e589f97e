"""The edged command's subcommands, a module each, assembled by edged.cli. The top layer:
they may use every part below, and nothing below imports them."""
