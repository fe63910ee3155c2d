# The README's two commands are `make demo` and `make test`; the rest are helpers.
.PHONY: setup demo test up down status lint bench

setup:
	@bash deploy/setup-env.sh

demo: setup
	.venv/bin/segstream demo

test: setup
	.venv/bin/python -m pytest

up: setup
	.venv/bin/segstream up

down:
	.venv/bin/segstream down

status:
	.venv/bin/segstream status

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
