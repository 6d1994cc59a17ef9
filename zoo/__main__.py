from zoo.cli import run

run()
