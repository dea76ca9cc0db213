from distml.cli import entry

entry()
